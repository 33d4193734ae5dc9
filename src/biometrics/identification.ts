/**
 * 1:N figures in the terms of NIST FRTE 1:N: a search is a probe compared with every template of a
 * gallery. A *mated* search's person is enrolled; a *non-mated* search's person (a stranger) is not.
 * - FPIR (false positive identification rate): the share of non-mated searches that name somebody.
 * - FNIR (false negative identification rate): the share of mated searches that do not name their
 *   own person (nobody named, or somebody else).
 * A search names its best-scoring person when that score reaches the threshold and, with an
 * ambiguity margin, beats the runner-up by at least the margin.
 */

export interface Search {
  mated: boolean;
  /** Best and second-best similarity over the gallery (−1 when the probe had no face, or no such template). */
  top1: number;
  top2: number;
  /** The best-scoring template is the probe's own person (mated searches only). */
  top1IsMate: boolean;
}

export interface Rule {
  threshold: number;
  /** 0 = no ambiguity check. */
  margin: number;
}

/** Whether the search names its best-scoring person under the rule. */
export function names(search: Search, rule: Rule): boolean {
  return search.top1 >= rule.threshold && search.top1 - search.top2 >= rule.margin;
}

export function fpir(searches: readonly Search[], rule: Rule): number {
  const nonMated = searches.filter((s) => !s.mated);
  return nonMated.filter((s) => names(s, rule)).length / nonMated.length;
}

export function fnir(searches: readonly Search[], rule: Rule): number {
  const mated = searches.filter((s) => s.mated);
  return mated.filter((s) => !(s.top1IsMate && names(s, rule))).length / mated.length;
}

/**
 * The lowest threshold at which at most `target` of the non-mated searches name somebody, with the
 * given margin. With few strangers a small target cannot be resolved: the answer is then just
 * above the best stranger's score, and `resolvable` is false (the run needs 1/target strangers).
 */
export function thresholdForFpir(searches: readonly Search[], target: number, margin: number): { threshold: number; resolvable: boolean } {
  const nonMated = searches.filter((s) => !s.mated);
  const naming = nonMated.filter((s) => s.top1 - s.top2 >= margin).map((s) => s.top1).sort((a, b) => b - a);
  const allowed = Math.floor(target * nonMated.length);
  const resolvable = target * nonMated.length >= 1;
  if (allowed >= naming.length) return { threshold: -1, resolvable };
  return { threshold: naming[allowed] + 1e-9, resolvable };
}

/** FNIR against FPIR as the threshold sweeps (a DET curve), one point per distinct stranger score. */
export function detCurve(searches: readonly Search[], margin: number): { fpir: number; fnir: number; threshold: number }[] {
  const strangers = searches.filter((s) => !s.mated && s.top1 - s.top2 >= margin).map((s) => s.top1);
  const thresholds = [...new Set(strangers)].sort((a, b) => a - b).map((t) => t + 1e-9);
  return thresholds.map((threshold) => {
    const rule = { threshold, margin };
    return { threshold, fpir: fpir(searches, rule), fnir: fnir(searches, rule) };
  });
}

/**
 * The upper tail of the impostor score distribution (one comparison of a stranger with one
 * template), modelled as exponential: FAR(t) = exp(a − b·t) for t at or above `from`. On the
 * evaluation set log FAR falls on a straight line over the last three decades measured, so the
 * line is extended to the FARs a large gallery needs, which no evaluation set can resolve.
 */
export interface ImpostorTail {
  a: number;
  b: number;
  /** The fit holds from this score up (FAR there is about `fittedFrom`). */
  from: number;
  fittedFrom: number;
  fittedTo: number;
  comparisons: number;
}

/** Least-squares fit of ln FAR against t over the scores whose FAR lies in [minFar, maxFar]. */
export function fitImpostorTail(impostorScores: Float64Array | number[], maxFar = 1e-3, minFar = 1e-5): ImpostorTail {
  const sorted = Float64Array.from(impostorScores).sort().reverse();
  const n = sorted.length;
  const xs: number[] = [];
  const ys: number[] = [];
  for (let rank = Math.max(1, Math.ceil(minFar * n)); rank <= Math.floor(maxFar * n); rank = Math.ceil(rank * 1.05)) {
    xs.push(sorted[rank - 1]);
    ys.push(Math.log(rank / n));
  }
  if (xs.length < 5) throw new Error(`too few impostor comparisons (${n}) to fit a tail between FAR ${minFar} and ${maxFar}`);
  const mx = xs.reduce((s, x) => s + x, 0) / xs.length;
  const my = ys.reduce((s, y) => s + y, 0) / ys.length;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < xs.length; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
  }
  const b = -sxy / sxx;
  return { a: my + b * mx, b, from: sorted[Math.floor(maxFar * n) - 1], fittedFrom: maxFar, fittedTo: minFar, comparisons: n };
}

/** Modelled false-accept rate of one comparison at threshold t (valid in the tail). */
export function tailFar(tail: ImpostorTail, threshold: number): number {
  return Math.min(1, Math.exp(tail.a - tail.b * threshold));
}

/**
 * Modelled FPIR of a gallery of `gallerySize` templates at `threshold`, without the ambiguity
 * margin (the margin only lowers it): a stranger is named when any of the comparisons passes.
 */
export function modelledFpir(tail: ImpostorTail, threshold: number, gallerySize: number): number {
  return 1 - (1 - tailFar(tail, threshold)) ** Math.max(1, gallerySize);
}

/** The threshold at which the modelled FPIR of a gallery of `gallerySize` is `targetFpir`. */
export function modelledThreshold(tail: ImpostorTail, targetFpir: number, gallerySize: number): number {
  const far = 1 - (1 - targetFpir) ** (1 / Math.max(1, gallerySize));
  return (tail.a - Math.log(far)) / tail.b;
}
