import { parseHex } from './challenge.ts';

/** A frame taken while the page showed colour `phase` of the challenge. */
export interface LightFrame {
  phase: number;
  /** Mean RGB of the face's skin (forehead and cheeks), 0..255. */
  faceColor: readonly [number, number, number];
}

export interface LightLimits {
  /** Phases that must have at least one frame. */
  minPhases: number;
  /** Pearson correlation between the shown colours and the face's colour changes. */
  minCorrelation: number;
  /** The face's chromaticity must move at least this much (standard deviation over phases). */
  minResponse: number;
}

// six colours at 0.7: a blind guess at the sequence passes about 1 % of the time (simulated)
export const DEFAULT_LIGHT_LIMITS: LightLimits = { minPhases: 5, minCorrelation: 0.7, minResponse: 0.003 };

export interface LightVerdict {
  passed: boolean;
  phasesSeen: number;
  correlation: number;
  response: number;
}

/**
 * The screen-light check: while the page flashes the drawn colours, a live face lit by the screen
 * shifts its own colour towards each of them. Working in chromaticity (r, g, b over their sum)
 * removes overall brightness; centring over the phases removes the skin's own tint. What remains
 * must correlate with the centred chromaticities of the colours shown. A replayed video or a
 * print cannot follow a random sequence it never saw.
 */
export function verifyScreenLight(colors: readonly string[], frames: readonly LightFrame[], limits = DEFAULT_LIGHT_LIMITS): LightVerdict {
  const seen: { shown: number[]; face: number[] }[] = [];
  for (let phase = 0; phase < colors.length; phase++) {
    const inPhase = frames.filter((f) => f.phase === phase);
    if (inPhase.length === 0) continue;
    const mean = [0, 1, 2].map((c) => inPhase.reduce((s, f) => s + f.faceColor[c], 0) / inPhase.length);
    seen.push({ shown: chromaticity(parseHex(colors[phase])), face: chromaticity(mean) });
  }
  if (seen.length < limits.minPhases) return { passed: false, phasesSeen: seen.length, correlation: 0, response: 0 };
  const centre = (rows: number[][]) => {
    const mean = [0, 1, 2].map((c) => rows.reduce((s, r) => s + r[c], 0) / rows.length);
    return rows.flatMap((r) => r.map((v, c) => v - mean[c]));
  };
  const shown = centre(seen.map((s) => s.shown));
  const face = centre(seen.map((s) => s.face));
  const correlation = pearson(shown, face);
  const response = Math.sqrt(face.reduce((s, v) => s + v * v, 0) / face.length);
  return {
    passed: correlation >= limits.minCorrelation && response >= limits.minResponse,
    phasesSeen: seen.length,
    correlation,
    response,
  };
}

function chromaticity([r, g, b]: readonly number[]): number[] {
  const sum = r + g + b || 1;
  return [r / sum, g / sum, b / sum];
}

function pearson(a: number[], b: number[]): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return aa > 0 && bb > 0 ? ab / Math.sqrt(aa * bb) : 0;
}
