/**
 * Verification and identification figures computed from labelled similarity scores.
 * Scores are similarities (higher = more alike); a pair is accepted when score >= threshold.
 */

export interface ScoredPair {
  score: number;
  same: boolean;
  fold?: number;
}

/** Area under the ROC curve, from ranks (ties count half). */
export function auc(pairs: readonly ScoredPair[]): number {
  const sorted = [...pairs].sort((a, b) => a.score - b.score);
  const positives = sorted.filter((p) => p.same).length;
  const negatives = sorted.length - positives;
  if (positives === 0 || negatives === 0) return Number.NaN;
  let rankSum = 0;
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j < sorted.length && sorted[j].score === sorted[i].score) j++;
    const meanRank = (i + 1 + j) / 2;
    for (let k = i; k < j; k++) if (sorted[k].same) rankSum += meanRank;
    i = j;
  }
  return (rankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}

/** Fraction of genuine pairs accepted at a threshold. */
export function trueAcceptRate(pairs: readonly ScoredPair[], threshold: number): number {
  const genuine = pairs.filter((p) => p.same);
  return genuine.filter((p) => p.score >= threshold).length / genuine.length;
}

/** Fraction of impostor pairs accepted at a threshold. */
export function falseAcceptRate(pairs: readonly ScoredPair[], threshold: number): number {
  const impostor = pairs.filter((p) => !p.same);
  return impostor.filter((p) => p.score >= threshold).length / impostor.length;
}

/**
 * The lowest threshold whose false-accept rate is at most `far`.
 * With far = 0 this is just above the best-scoring impostor pair.
 */
export function thresholdAtFar(pairs: readonly ScoredPair[], far: number): number {
  const impostorScores = pairs.filter((p) => !p.same).map((p) => p.score).sort((a, b) => b - a);
  const allowed = Math.floor(far * impostorScores.length);
  if (allowed >= impostorScores.length) return -Infinity;
  return nextUp(impostorScores[allowed]);
}

export function tarAtFar(pairs: readonly ScoredPair[], far: number): number {
  return trueAcceptRate(pairs, thresholdAtFar(pairs, far));
}

/** Equal error rate: where false accepts and false rejects cross (mean of the two at the closest point). */
export function equalErrorRate(pairs: readonly ScoredPair[]): number {
  let best = { gap: Infinity, eer: 1 };
  for (const t of candidateThresholds(pairs)) {
    const far = falseAcceptRate(pairs, t);
    const frr = 1 - trueAcceptRate(pairs, t);
    const gap = Math.abs(far - frr);
    if (gap < best.gap) best = { gap, eer: (far + frr) / 2 };
  }
  return best.eer;
}

export function accuracyAt(pairs: readonly ScoredPair[], threshold: number): number {
  let correct = 0;
  for (const p of pairs) if ((p.score >= threshold) === p.same) correct++;
  return correct / pairs.length;
}

/** The threshold that maximises accuracy on these pairs (midpoint between neighbouring scores). */
export function bestAccuracyThreshold(pairs: readonly ScoredPair[]): number {
  let best = { accuracy: -1, threshold: 0 };
  for (const t of candidateThresholds(pairs)) {
    const accuracy = accuracyAt(pairs, t);
    if (accuracy > best.accuracy) best = { accuracy, threshold: t };
  }
  return best.threshold;
}

/**
 * The standard LFW protocol: each fold is scored at the threshold that maximises accuracy on the
 * other folds; the figure is the mean of the fold accuracies.
 */
export function kFoldAccuracy(pairs: readonly ScoredPair[]): { mean: number; folds: number[] } | null {
  const folds = [...new Set(pairs.map((p) => p.fold).filter((f): f is number => f !== undefined))].sort((a, b) => a - b);
  if (folds.length < 2) return null;
  const accuracies = folds.map((fold) => {
    const train = pairs.filter((p) => p.fold !== fold);
    const test = pairs.filter((p) => p.fold === fold);
    return accuracyAt(test, bestAccuracyThreshold(train));
  });
  return { mean: accuracies.reduce((s, a) => s + a, 0) / accuracies.length, folds: accuracies };
}

function candidateThresholds(pairs: readonly ScoredPair[]): number[] {
  const scores = [...new Set(pairs.map((p) => p.score))].sort((a, b) => a - b);
  const out = [scores[0] - 1e-9];
  for (let i = 1; i < scores.length; i++) out.push((scores[i - 1] + scores[i]) / 2);
  out.push(scores[scores.length - 1] + 1e-9);
  return out;
}

function nextUp(x: number): number {
  return x + Math.max(Math.abs(x) * 1e-12, 1e-12);
}
