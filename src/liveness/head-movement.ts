import { similarity } from '../biometrics/embedding.ts';
import { type Embeddings, newest } from '../biometrics/matchers/index.ts';
import type { Pose } from '../biometrics/types.ts';
import type { SameFaceLimits } from './index.ts';
import type { Step } from './challenge.ts';

/** One analysed frame as the movement check sees it. */
export interface MovementFrame {
  /** Milliseconds, server clock. */
  at: number;
  pose: Pose;
  eyeOpenness: { left: number; right: number };
  embeddings: Embeddings;
}

export type MovementFailure = 'wrong_movement' | 'too_slow' | 'identity_switch' | 'missing_step';

export interface MovementLimits {
  /** Degrees of yaw for a turn, of pitch for looking up. */
  turnDegrees: number;
  lookUpDegrees: number;
  /** A movement in a direction that was not asked for fails the check beyond this many degrees. */
  wrongDegrees: number;
  /** Eyes count as closed below this openness and below this fraction of the person's own open eyes. */
  closedEyes: number;
  closedFraction: number;
  /** Per model: same-person similarity for frontal frames, and the looser one for turned faces. */
  sameFace: SameFaceLimits;
  stepMillis: number;
}

export const DEFAULT_MOVEMENT_LIMITS: Omit<MovementLimits, 'stepMillis' | 'sameFace'> = {
  turnDegrees: 18,
  lookUpDegrees: 12,
  wrongDegrees: 25,
  closedEyes: 0.15,
  closedFraction: 0.6,
};

const FRONTAL = 12;

/**
 * Follows the head-movement challenge frame by frame. The movements must come in the drawn
 * order, each within `stepMillis` of the previous one, from the same face; a clear movement in a
 * direction not asked for fails at once, so a looped or pre-recorded video that turns every way
 * cannot wait for its turn. A still photo never moves and so never completes.
 */
export class HeadMovementCheck {
  #done = 0;
  #failure: MovementFailure | null = null;
  #reference: Embeddings | null = null;
  #openEyes: number[] = [];
  #lastProgressAt: number | null = null;

  constructor(
    readonly steps: readonly Step[],
    private readonly limits: MovementLimits,
  ) {}

  get completed(): number {
    return this.#done;
  }

  get current(): Step | null {
    return this.#failure || this.#done >= this.steps.length ? null : this.steps[this.#done];
  }

  get failure(): MovementFailure | null {
    return this.#failure;
  }

  get passed(): boolean {
    return this.#failure === null && this.#done === this.steps.length;
  }

  observe(frame: MovementFrame): void {
    if (this.#failure || this.passed) return;
    if (!this.#sameFace(frame)) return this.#fail('identity_switch');
    this.#lastProgressAt ??= frame.at;
    if (frame.at - this.#lastProgressAt > this.limits.stepMillis) return this.#fail('too_slow');

    const { yaw, pitch } = frame.pose;
    const eyes = Math.min(frame.eyeOpenness.left, frame.eyeOpenness.right);
    const frontal = Math.abs(yaw) < FRONTAL && Math.abs(pitch) < FRONTAL;
    const step = this.steps[this.#done];
    if (this.#meets(step, frame)) {
      this.#done++;
      this.#lastProgressAt = frame.at;
      return;
    }
    // a pose in a direction not asked for, except the one just made (the head is on its way back)
    const l = this.limits;
    const allowed = new Set([step, this.steps[this.#done - 1]]);
    const wrong =
      (!allowed.has('turn_left') && yaw > l.wrongDegrees) ||
      (!allowed.has('turn_right') && yaw < -l.wrongDegrees) ||
      (!allowed.has('look_up') && pitch > l.wrongDegrees);
    if (wrong) return this.#fail('wrong_movement');
    if (frontal && eyes >= l.closedEyes) this.#openEyes.push(eyes);
  }

  /** The verdict once the capture is over: null when every movement was made. */
  verdict(): MovementFailure | null {
    return this.#failure ?? (this.passed ? null : 'missing_step');
  }

  #meets(step: Step, frame: MovementFrame): boolean {
    const l = this.limits;
    switch (step) {
      case 'turn_left':
        return frame.pose.yaw >= l.turnDegrees;
      case 'turn_right':
        return frame.pose.yaw <= -l.turnDegrees;
      case 'look_up':
        return frame.pose.pitch >= l.lookUpDegrees;
      case 'blink': {
        // closed against this person's own open eyes, seen earlier in the session
        if (this.#openEyes.length === 0) return false;
        const open = median(this.#openEyes);
        const eyes = Math.max(frame.eyeOpenness.left, frame.eyeOpenness.right);
        return eyes < l.closedEyes && eyes < l.closedFraction * open;
      }
    }
  }

  #sameFace(frame: MovementFrame): boolean {
    const seen = newest(frame.embeddings);
    if (!seen) return true;
    const turned = Math.abs(frame.pose.yaw) >= FRONTAL || Math.abs(frame.pose.pitch) >= FRONTAL;
    if (!this.#reference) {
      if (!turned) this.#reference = frame.embeddings;
      return true;
    }
    const reference = this.#reference[seen.model];
    if (!reference) return true;
    const limits = this.limits.sameFace[seen.model];
    return similarity(reference, seen.embedding) >= (turned ? limits.turned : limits.frontal);
  }

  #fail(reason: MovementFailure): void {
    this.#failure = reason;
  }
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
