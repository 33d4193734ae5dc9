import fs from 'node:fs';
import path from 'node:path';
import { similarity } from './embedding.ts';
import { Gallery } from './gallery.ts';
import {
  type ScoredPair,
  auc,
  bestAccuracyThreshold,
  equalErrorRate,
  falseAcceptRate,
  kFoldAccuracy,
  tarAtFar,
  thresholdAtFar,
  trueAcceptRate,
} from './metrics.ts';
import type { FrameAnalysis } from './types.ts';

export interface Analyzer {
  analyze(bytes: Uint8Array, options: { mode: 'photo' }): Promise<FrameAnalysis>;
}

const IMAGE_EXT = /\.(jpe?g|png|webp)$/i;
const round = (x: number, digits = 4) => (Number.isFinite(x) ? Number(x.toFixed(digits)) : null);

/** Analyses every image once, `concurrency` at a time; returns embeddings (null = no face) and timings. */
async function embedAll(
  analyzer: Analyzer,
  files: string[],
  concurrency: number,
  onProgress?: (done: number, total: number) => void,
): Promise<{ embeddings: Map<string, Float32Array | null>; msPerImage: number }> {
  const embeddings = new Map<string, Float32Array | null>();
  let next = 0;
  let millis = 0;
  let done = 0;
  const worker = async () => {
    while (next < files.length) {
      const file = files[next++];
      const analysis = await analyzer.analyze(new Uint8Array(fs.readFileSync(file)), { mode: 'photo' });
      embeddings.set(file, analysis.embedding);
      millis += analysis.millis;
      onProgress?.(++done, files.length);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
  return { embeddings, msPerImage: millis / Math.max(1, files.length) };
}

/** CSV of labelled pairs: `file_x,file_y,Decision[,fold]`; paths relative to `imagesDir`, else by file name. */
export function readPairs(csvFile: string, imagesDir: string): { x: string; y: string; same: boolean; fold?: number }[] {
  const lines = fs.readFileSync(csvFile, 'utf8').split(/\r?\n/).filter((l) => l.trim());
  const header = lines[0].toLowerCase().split(',').map((h) => h.trim());
  const col = (name: string) => header.indexOf(name);
  const [ix, iy, id, ifold] = [col('file_x'), col('file_y'), col('decision'), col('fold')];
  if (ix < 0 || iy < 0 || id < 0) throw new Error(`${csvFile}: expected columns file_x,file_y,Decision[,fold]`);
  const resolve = (p: string) => {
    const direct = path.resolve(imagesDir, p);
    if (fs.existsSync(direct)) return direct;
    const byName = path.resolve(imagesDir, path.basename(p));
    if (fs.existsSync(byName)) return byName;
    throw new Error(`${csvFile}: image ${p} not found under ${imagesDir}`);
  };
  return lines.slice(1).map((line, n) => {
    const cells = line.split(',').map((c) => c.trim());
    const decision = cells[id].toLowerCase();
    if (!/^(yes|no|true|false|1|0|same|different)$/.test(decision)) {
      throw new Error(`${csvFile}:${n + 2}: Decision must be Yes/No, True/False or 1/0`);
    }
    const fold = ifold >= 0 && cells[ifold] !== '' ? Number(cells[ifold]) : undefined;
    return { x: resolve(cells[ix]), y: resolve(cells[iy]), same: /^(yes|true|1|same)$/.test(decision), fold };
  });
}

export interface PairFigures {
  pairs: number;
  images: number;
  failed_to_detect: number;
  auc: number | null;
  eer: number | null;
  tar_at_far_0: number | null;
  'tar_at_far_0.01': number | null;
  'tar_at_far_0.001': number | null;
  accuracy_kfold?: number | null;
  accuracy_folds?: (number | null)[];
  /** Accuracy-maximising threshold over all pairs. */
  threshold: number | null;
  threshold_at_far_0: number | null;
  /** How the service's configured threshold does on these pairs. */
  at_default_threshold: { threshold: number; tar: number | null; far: number | null };
  ms_per_image: number | null;
}

/**
 * 1:1 figures on labelled pairs. A pair whose image has no detectable face scores −1 (rejected),
 * so detection failures count against genuine pairs rather than being dropped.
 */
export async function evaluatePairs(
  analyzer: Analyzer,
  opts: { csv: string; images: string; concurrency: number; defaultThreshold: number; onProgress?: (d: number, t: number) => void },
): Promise<PairFigures> {
  const labelled = readPairs(opts.csv, opts.images);
  const files = [...new Set(labelled.flatMap((p) => [p.x, p.y]))];
  const { embeddings, msPerImage } = await embedAll(analyzer, files, opts.concurrency, opts.onProgress);
  const scored: ScoredPair[] = labelled.map((p) => {
    const a = embeddings.get(p.x);
    const b = embeddings.get(p.y);
    return { same: p.same, fold: p.fold, score: a && b ? similarity(a, b) : -1 };
  });
  const kfold = kFoldAccuracy(scored);
  const figures: PairFigures = {
    pairs: scored.length,
    images: files.length,
    failed_to_detect: [...embeddings.values()].filter((e) => e === null).length,
    auc: round(auc(scored)),
    eer: round(equalErrorRate(scored)),
    tar_at_far_0: round(tarAtFar(scored, 0)),
    'tar_at_far_0.01': round(tarAtFar(scored, 0.01)),
    'tar_at_far_0.001': round(tarAtFar(scored, 0.001)),
    threshold: round(bestAccuracyThreshold(scored), 5),
    threshold_at_far_0: round(thresholdAtFar(scored, 0), 5),
    at_default_threshold: {
      threshold: opts.defaultThreshold,
      tar: round(trueAcceptRate(scored, opts.defaultThreshold)),
      far: round(falseAcceptRate(scored, opts.defaultThreshold), 5),
    },
    ms_per_image: round(msPerImage, 1),
  };
  if (kfold) {
    figures.accuracy_kfold = round(kfold.mean);
    figures.accuracy_folds = kfold.folds.map((f) => round(f));
  }
  return figures;
}

export interface IdentifyFigures {
  people: number;
  enrolled: number;
  probes: number;
  failed_to_detect: number;
  /** Probes whose best match is their own template (whatever its score). */
  rank1: number | null;
  /** Probes identified as the right person at the threshold. */
  identified_at_threshold: number | null;
  /** Probes accepted at the threshold as somebody else: must be 0. */
  false_identifications: number;
  threshold: number;
  ms_per_image: number | null;
}

/** 1:N: the first image (by name) of each person's folder is enrolled, the others are identified. */
export async function evaluateIdentify(
  analyzer: Analyzer,
  opts: { gallery: string; exclude: string[]; concurrency: number; threshold: number },
): Promise<IdentifyFigures> {
  const people = fs
    .readdirSync(opts.gallery, { withFileTypes: true })
    .filter((d) => d.isDirectory() && !opts.exclude.includes(d.name))
    .map((d) => ({
      name: d.name,
      files: fs
        .readdirSync(path.join(opts.gallery, d.name))
        .filter((f) => IMAGE_EXT.test(f))
        .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
        .map((f) => path.join(opts.gallery, d.name, f)),
    }))
    .filter((p) => p.files.length > 0);
  const all = people.flatMap((p) => p.files);
  const { embeddings, msPerImage } = await embedAll(analyzer, all, opts.concurrency);
  const gallery = new Gallery();
  for (const p of people) {
    const e = embeddings.get(p.files[0]);
    if (e) gallery.upsert(p.name, e);
  }
  let probes = 0;
  let rank1 = 0;
  let identified = 0;
  let falseIds = 0;
  for (const p of people) {
    for (const file of p.files.slice(1)) {
      probes++;
      const e = embeddings.get(file);
      const best = e ? gallery.best(e) : undefined;
      if (!best) continue;
      if (best.externalUserId === p.name) {
        rank1++;
        if (best.score >= opts.threshold) identified++;
      } else if (best.score >= opts.threshold) {
        falseIds++;
      }
    }
  }
  return {
    people: people.length,
    enrolled: gallery.size,
    probes,
    failed_to_detect: [...embeddings.values()].filter((e) => e === null).length,
    rank1: round(rank1 / Math.max(1, probes)),
    identified_at_threshold: round(identified / Math.max(1, probes)),
    false_identifications: falseIds,
    threshold: opts.threshold,
    ms_per_image: round(msPerImage, 1),
  };
}
