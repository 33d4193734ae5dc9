import type { FaceObservation } from '../biometrics/types.ts';

/** Frame-level presentation-attack floors (README, "Liveness"; measured by `npm run eval:liveness`). */
export interface AttackLimits {
  /** A straight edge framing the face on opposite sides this completely (a bezel, a print's edge). */
  maxBorder: number;
  /** An isolated spectral peak this far above the median (log10): a screen's pixel grid. */
  maxMoire: number;
  /** Human's passive models: below these the frame counts as an attack. */
  minAntispoof: number;
  minLiveness: number;
}

/**
 * Chosen on the shared spoof samples (`npm run eval:liveness`). The face anti-spoofing network
 * does the work now (presentation-attack.ts, decided per session in index.ts), so these fire only
 * on blatant cases: each sits above every bona fide sample. The border floor was 0.5 while it was
 * the only working check (it then refused 3 of 62 bona fide photos, border 0.51–0.56); at 0.6 it
 * still catches the replays whose phone edge is in view (0.82–1.00), which the network refuses too.
 */
export const DEFAULT_ATTACK_LIMITS: AttackLimits = { maxBorder: 0.6, maxMoire: 4.5, minAntispoof: 0.2, minLiveness: 0.3 };

export type AttackSignal = 'device_border' | 'screen_pattern' | 'passive_model';

/** What in this frame looks like a screen or a print (empty = nothing). */
export function attackSignals(face: FaceObservation, limits: AttackLimits = DEFAULT_ATTACK_LIMITS): AttackSignal[] {
  const signals: AttackSignal[] = [];
  if (face.artefacts.border >= limits.maxBorder) signals.push('device_border');
  if (face.artefacts.moire >= limits.maxMoire) signals.push('screen_pattern');
  if (face.antispoof < limits.minAntispoof || face.liveness < limits.minLiveness) signals.push('passive_model');
  return signals;
}
