import type { FrameAnalysis, TaskRoute } from '../biometrics/index.ts';
import { meanEmbedding, similarity } from '../biometrics/embedding.ts';
import { type Embeddings, type ModelId, MATCHERS, newest } from '../biometrics/matchers/index.ts';
import type { EventBus } from '../core/events.ts';
import { ServiceError } from '../errors.ts';
import { type LivenessOptions, type LivenessProgress, LivenessSession } from '../liveness/index.ts';
import type { Session } from '../store/sessions.ts';
import type { LivenessMode } from '../store/tenants.ts';
import { type SessionService, redirectTarget } from '../sessions/service.ts';

export interface FrameAnalyzer {
  analyze(bytes: Uint8Array, options: { mode: 'capture'; models: readonly ModelId[] }, route: TaskRoute): Promise<FrameAnalysis>;
}

export interface CaptureOptions {
  /** Usable frames a decision needs: `complete` with fewer fails the session (not_enough_frames). */
  requiredFrames: number;
  /** Frames one session may upload in all (429 beyond). */
  maxFrames: number;
  /** Liveness limits; a frame must match the session's first accepted face at `liveness.sameFace[model].frontal` (same person). */
  liveness: LivenessOptions;
  /** A session's own anti-spoofing floor (its door's, else its tenant's), if it has one; else `liveness.padThreshold`. */
  padThresholdFor?: (session: Session) => Promise<number | undefined>;
  /** The models to describe a tenant's faces with: those that decide its people, and the one of new templates (biometry.ts). */
  modelsFor(tenantId: string): readonly ModelId[];
}

/** Per-frame reasons beyond the engine's quality problems. */
export type FrameProblem = FrameAnalysis['problems'][number] | 'presentation_attack_suspected' | 'different_face';

export interface FrameFeedback {
  accepted: boolean;
  faceFound: boolean;
  faces: number;
  problems: FrameProblem[];
  acceptedFrames: number;
  requiredFrames: number;
  liveness: LivenessProgress;
}

export interface CaptureView {
  session: Session;
  livenessMode: LivenessMode;
  requiredFrames: number;
  maxFrames: number;
}

export interface CaptureResult {
  session: Session;
  redirectTo: string;
}

/** What a session's capture has gathered so far: embeddings and verdicts only, never pixels. */
interface Progress {
  /** Frames analysed (refused ones are not counted). */
  frames: number;
  /** A frame of this session is being analysed now. */
  inFlight: boolean;
  acceptedCount: number;
  /** The first accepted embeddings, one per model each (at most KEPT_EMBEDDINGS frames). */
  accepted: Embeddings[];
  tally: Map<FrameProblem, number>;
  liveness: LivenessSession;
}

const KEPT_EMBEDDINGS = 5; // the template averages at most this many frames

/**
 * The capture API behind `biometry_url`: the page (or a native app) opens the session with its
 * token, uploads frames one by one and completes. Frames are analysed and dropped; only their
 * embeddings and per-frame verdicts are held, in memory, until the session ends. Liveness is
 * decided here, on the server, from the frames themselves (src/liveness).
 */
export class CaptureService {
  readonly #progress = new Map<string, Progress>();

  constructor(
    private readonly sessions: SessionService,
    private readonly analyzer: FrameAnalyzer,
    private readonly events: EventBus,
    private readonly options: CaptureOptions,
  ) {
    events.on('session.finished', ({ sessionId }) => this.#progress.delete(sessionId));
  }

  async open(token: string): Promise<CaptureView> {
    const session = await this.sessions.bind(await this.sessions.byCaptureToken(token));
    return {
      session,
      livenessMode: session.challenge ? 'active' : 'passive',
      requiredFrames: this.options.requiredFrames,
      maxFrames: this.options.maxFrames,
    };
  }

  /**
   * One frame of the capture. A link has one frame in flight at a time (429 otherwise), and only
   * frames the engine analysed count towards the session's allowance: one refused by its header,
   * by a full queue or by the time limit does not use it up. The device's own doors go first in
   * the engine's queue; tenants take turns.
   * `lightPhase`: which colour of the challenge the page was showing when it took the frame.
   */
  async submitFrame(token: string, image: Uint8Array, meta: { lightPhase?: number } = {}): Promise<FrameFeedback> {
    let session = await this.sessions.bind(await this.sessions.byCaptureToken(token));
    const progress = await this.#progressOf(session);
    if (progress.frames >= this.options.maxFrames) {
      throw new ServiceError('too_many_requests', 'too_many_frames', `a session accepts at most ${this.options.maxFrames} frames`);
    }
    if (progress.inFlight) {
      throw new ServiceError('too_many_requests', 'frame_in_flight', 'send one frame at a time: wait for the answer to the previous one');
    }
    progress.inFlight = true;
    let analysis: FrameAnalysis;
    try {
      const models = this.options.modelsFor(session.tenantId);
      analysis = await this.analyzer.analyze(image, { mode: 'capture', models }, { lane: session.tenantId, priority: session.doorId !== null });
    } finally {
      progress.inFlight = false;
    }
    progress.frames++;
    // the link may have been used up or expired while the frame was being analysed
    session = await this.sessions.byCaptureToken(token);
    const problems: FrameProblem[] = [...analysis.problems];
    if (progress.liveness.observe(analysis, { at: Date.now(), lightPhase: meta.lightPhase }).length > 0) {
      problems.push('presentation_attack_suspected');
    }
    const seen = newest(analysis.embeddings);
    const first = seen && progress.accepted[0]?.[seen.model];
    if (problems.length === 0 && seen && first && similarity(first, seen.embedding) < this.options.liveness.sameFace[seen.model].frontal) {
      problems.push('different_face');
    }
    const accepted = problems.length === 0 && seen !== undefined;
    if (accepted) {
      progress.acceptedCount++;
      if (progress.accepted.length < KEPT_EMBEDDINGS) progress.accepted.push(analysis.embeddings);
    }
    for (const p of problems) progress.tally.set(p, (progress.tally.get(p) ?? 0) + 1);
    this.events.emit('frame.analysed', { tenantId: session.tenantId, accepted, problems, millis: analysis.millis });
    return {
      accepted,
      faceFound: analysis.face !== null,
      faces: analysis.faceCount,
      problems,
      acceptedFrames: progress.acceptedCount,
      requiredFrames: this.options.requiredFrames,
      liveness: progress.liveness.progress(),
    };
  }

  /** Decides over the accepted frames; afterwards the token accepts nothing more. */
  async complete(token: string): Promise<CaptureResult> {
    const session = await this.sessions.byCaptureToken(token);
    const progress = await this.#progressOf(session);
    const refusal = refusalReason(progress, this.options.requiredFrames);
    const finished = refusal
      ? await this.sessions.fail(session, refusal)
      : await this.sessions.decide(session, meanProbe(progress.accepted));
    return { session: finished, redirectTo: redirectTarget(finished) };
  }

  /** The person gave up: the session fails with `cancelled` and the browser still goes back. */
  async cancel(token: string): Promise<CaptureResult> {
    const session = await this.sessions.byCaptureToken(token);
    const finished = await this.sessions.fail(session, 'cancelled');
    return { session: finished, redirectTo: redirectTarget(finished) };
  }

  async #progressOf(session: Session): Promise<Progress> {
    const known = this.#progress.get(session.id);
    if (known) return known;
    const padThreshold = (await this.options.padThresholdFor?.(session)) ?? this.options.liveness.padThreshold;
    // another frame of the session may have made it meanwhile
    let p = this.#progress.get(session.id);
    if (!p) {
      const mode: LivenessMode = session.challenge ? 'active' : 'passive';
      p = { frames: 0, inFlight: false, acceptedCount: 0, accepted: [], tally: new Map(), liveness: new LivenessSession(mode, session.challenge, { ...this.options.liveness, padThreshold }) };
      this.#progress.set(session.id, p);
    }
    return p;
  }
}

/** Per model, the normalised mean of the accepted frames' embeddings (a model some frames lack averages the others). */
function meanProbe(frames: readonly Embeddings[]): Embeddings {
  const probe: Embeddings = {};
  for (const { id } of MATCHERS) {
    const list = frames.flatMap((f) => f[id] ?? []);
    if (list.length > 0) probe[id] = meanEmbedding(list);
  }
  return probe;
}

/**
 * Why the capture cannot be decided, or null when it can: liveness first (a screen or print, a
 * face that changed between frames, an unfinished or failed challenge), then too few usable
 * frames: a decision needs `requiredFrames` of them (with none at all, the reason is what the
 * frames showed most).
 */
function refusalReason(progress: Progress, required: number): string | null {
  const count = (p: FrameProblem) => progress.tally.get(p) ?? 0;
  const accepted = progress.acceptedCount;
  if (count('different_face') > 0) return 'liveness_failed';
  const liveness = progress.liveness.verdict(accepted);
  if (liveness) return liveness;
  if (accepted >= required) return null;
  if (accepted > 0) return 'not_enough_frames';
  if (progress.frames === 0 || count('no_face') === progress.frames) return 'no_face';
  if (count('multiple_faces') > 0 && count('multiple_faces') >= progress.frames - count('no_face')) return 'multiple_faces';
  return 'poor_quality';
}
