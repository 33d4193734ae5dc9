import crypto from 'node:crypto';

/** A head movement the person is asked to make. */
export type Step = 'turn_left' | 'turn_right' | 'look_up' | 'blink';

export const STEPS: readonly Step[] = ['turn_left', 'turn_right', 'look_up', 'blink'];

/** Colours the capture page may flash; `#ffffff` is full white. */
export const PALETTE: readonly string[] = ['#ff0000', '#00ff00', '#0000ff', '#ffff00', '#ff00ff', '#00ffff'];

/**
 * What an active-liveness session asks for, drawn by the server per session and stored with it,
 * so reloading the page cannot re-draw it until a recorded video happens to match.
 */
export interface Challenge {
  /** Two or three head movements, in this order. */
  steps: Step[];
  /** The screen colours to show one after the other while the face looks at the camera. */
  colors: string[];
  /** How long each colour stays on screen. */
  colorMillis: number;
  /** Each movement must come within this long after the previous one. */
  stepMillis: number;
}

export function drawChallenge(random: (n: number) => number = (n) => crypto.randomInt(n)): Challenge {
  const pool = [...STEPS];
  const steps: Step[] = [];
  const count = 2 + random(2);
  while (steps.length < count) steps.push(pool.splice(random(pool.length), 1)[0]);
  const colors: string[] = [];
  while (colors.length < 6) {
    const next = PALETTE[random(PALETTE.length)];
    // consecutive colours must differ, or two phases could not be told apart
    if (next !== colors[colors.length - 1]) colors.push(next);
  }
  return { steps, colors, colorMillis: 600, stepMillis: 10_000 };
}

export function parseHex(color: string): [number, number, number] {
  const n = Number.parseInt(color.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}
