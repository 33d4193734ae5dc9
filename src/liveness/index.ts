import type { ModelId } from '../biometrics/matchers/index.ts';
import type { FrameAnalysis } from '../biometrics/types.ts';
import type { LivenessMode } from '../store/tenants.ts';
import { type AttackLimits, type AttackSignal, DEFAULT_ATTACK_LIMITS, attackSignals } from './attack-signals.ts';
import type { Challenge, Step } from './challenge.ts';
import { DEFAULT_MOVEMENT_LIMITS, HeadMovementCheck, type MovementFailure } from './head-movement.ts';
import { DEFAULT_LIGHT_LIMITS, type LightFrame, type LightLimits, verifyScreenLight } from './screen-light.ts';

export type { Challenge, Step } from './challenge.ts';
export { drawChallenge } from './challenge.ts';

export interface LivenessOptions {
  attack: AttackLimits;
  /**
   * The face anti-spoofing network's floor (presentation-attack.ts): a session with an accepted
   * frame that scores below it is refused as `spoof_detected`, in both modes.
   */
  padThreshold: number;
  light: LightLimits;
  /** Per model: same-person similarity for frontal frames (the match threshold), and for turned ones. */
  sameFace: SameFaceLimits;
}

export type SameFaceLimits = Record<ModelId, { frontal: number; turned: number }>;

/**
 * Chosen on the dev set (`npm run eval:liveness`): the highest floor that refuses at most 5 % of
 * the bona fide photos (3 of 62: the Silent-Face live sample among them); at it, 2 of 25 attack
 * frames pass and no attack session does (README, "Passive anti-spoofing").
 */
export const DEFAULT_PAD_THRESHOLD = 0.08;

export const defaultLivenessOptions = (sameFace: SameFaceLimits): LivenessOptions => ({
  attack: DEFAULT_ATTACK_LIMITS,
  padThreshold: DEFAULT_PAD_THRESHOLD,
  light: DEFAULT_LIGHT_LIMITS,
  sameFace,
});

export interface LivenessProgress {
  mode: LivenessMode;
  stepsDone: number;
  stepsTotal: number;
  currentStep: Step | null;
  lightPhasesSeen: number;
  lightPhasesTotal: number;
  /** Set once a check has failed for good (the session will fail with liveness_failed). */
  failed: MovementFailure | null;
}

export type LivenessVerdict = 'spoof_detected' | 'liveness_failed' | null;

/**
 * The liveness checks of one capture session, fed every analysed frame. In both modes every frame
 * is checked for screens and prints (attack-signals.ts); in active mode the head-movement and
 * screen-light challenges must also be completed (head-movement.ts, screen-light.ts).
 */
export class LivenessSession {
  readonly #movement: HeadMovementCheck | null;
  readonly #light: LightFrame[] = [];
  /** The anti-spoofing network's live score of each usable frame without attack signals (in memory only). */
  readonly #liveScores: number[] = [];
  #flagged = 0;

  constructor(
    readonly mode: LivenessMode,
    readonly challenge: Challenge | null,
    private readonly options: LivenessOptions,
  ) {
    this.#movement =
      mode === 'active' && challenge
        ? new HeadMovementCheck(challenge.steps, { ...DEFAULT_MOVEMENT_LIMITS, sameFace: options.sameFace, stepMillis: challenge.stepMillis })
        : null;
  }

  /** Takes one frame in; returns what in it looked like an attack. */
  observe(analysis: FrameAnalysis, meta: { at: number; lightPhase?: number }): AttackSignal[] {
    const face = analysis.face;
    if (!face || analysis.problems.includes('multiple_faces')) return [];
    const signals = attackSignals(face, this.options.attack);
    if (signals.length > 0) {
      this.#flagged++;
      return signals;
    }
    // only frames the session can use count: a blurred or turned-away one says nothing of the person
    if (face.liveScore !== null && analysis.problems.length === 0) this.#liveScores.push(face.liveScore);
    this.#movement?.observe({ at: meta.at, pose: face.pose, eyeOpenness: face.eyeOpenness, embeddings: analysis.embeddings });
    const phase = meta.lightPhase;
    if (this.challenge && phase !== undefined && phase >= 0 && phase < this.challenge.colors.length) {
      this.#light.push({ phase, faceColor: face.faceColor });
    }
    return signals;
  }

  progress(): LivenessProgress {
    const phases = new Set(this.#light.map((f) => f.phase)).size;
    return {
      mode: this.mode,
      stepsDone: this.#movement?.completed ?? 0,
      stepsTotal: this.#movement?.steps.length ?? 0,
      currentStep: this.#movement?.current ?? null,
      lightPhasesSeen: phases,
      lightPhasesTotal: this.mode === 'active' ? (this.challenge?.colors.length ?? 0) : 0,
      failed: this.#movement?.failure ?? null,
    };
  }

  /** The decision at completion; `accepted` is how many frames passed every check. */
  verdict(accepted: number): LivenessVerdict {
    if (this.#flagged > 0 && this.#flagged >= accepted) return 'spoof_detected';
    // every usable frame must meet the network's floor, not their median: one replay's frames
    // score from 0.00 to 0.97, and its best ones pass a median. An attack that passes the
    // challenges by chance still meets it
    if (this.#liveScores.some((score) => score < this.options.padThreshold)) return 'spoof_detected';
    if (this.mode === 'passive') return null;
    if (!this.#movement || !this.challenge || this.#movement.verdict()) return 'liveness_failed';
    return verifyScreenLight(this.challenge.colors, this.#light, this.options.light).passed ? null : 'liveness_failed';
  }
}
