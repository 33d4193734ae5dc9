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
import { type Rule, type Search, fnir, fpir, names, thresholdForFpir } from './identification.ts';
import { type Embeddings, type ModelId, PRIMARY_MODEL, matcher } from './matchers/index.ts';
import type { AnalyzeOptions, FrameAnalysis } from './types.ts';

export interface Analyzer {
  analyze(bytes: Uint8Array, options: AnalyzeOptions): Promise<FrameAnalysis>;
}

const IMAGE_EXT = /\.(jpe?g|png|webp)$/i;
const round = (x: number, digits = 4) => (Number.isFinite(x) ? Number(x.toFixed(digits)) : null);

/**
 * Analyses every image once, `concurrency` at a time, describing each face with `models`; returns
 * the embeddings (null = no face) and timings.
 */
export async function embedAll(
  analyzer: Analyzer,
  files: string[],
  concurrency: number,
  models: readonly ModelId[] = [PRIMARY_MODEL],
  onProgress?: (done: number, total: number) => void,
): Promise<{ embeddings: Map<string, Embeddings | null>; msPerImage: number }> {
  const embeddings = new Map<string, Embeddings | null>();
  let next = 0;
  let millis = 0;
  let done = 0;
  const worker = async () => {
    while (next < files.length) {
      const file = files[next++];
      const analysis = await analyzer.analyze(new Uint8Array(fs.readFileSync(file)), { mode: 'photo', models });
      embeddings.set(file, analysis.face ? analysis.embeddings : null);
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
 * 1:1 figures on labelled pairs, for each model (its own threshold is the "default" one). A pair
 * whose image has no detectable face scores −1 (rejected), so detection failures count against
 * genuine pairs rather than being dropped. `thresholds`: a model's threshold other than its
 * matcher's (the service's settings).
 */
export async function evaluatePairs(
  analyzer: Analyzer,
  opts: { csv: string; images: string; concurrency: number; models?: readonly ModelId[]; thresholds?: Partial<Record<ModelId, number>>; onProgress?: (d: number, t: number) => void },
): Promise<Partial<Record<ModelId, PairFigures>>> {
  const models = opts.models ?? [PRIMARY_MODEL];
  const labelled = readPairs(opts.csv, opts.images);
  const files = [...new Set(labelled.flatMap((p) => [p.x, p.y]))];
  const { embeddings, msPerImage } = await embedAll(analyzer, files, opts.concurrency, models, opts.onProgress);
  const out: Partial<Record<ModelId, PairFigures>> = {};
  for (const model of models) {
    const threshold = opts.thresholds?.[model] ?? matcher(model).matchThreshold;
    out[model] = pairFigures(labelled, files.length, (file) => embeddings.get(file)?.[model] ?? null, threshold, msPerImage);
  }
  return out;
}

function pairFigures(
  labelled: { x: string; y: string; same: boolean; fold?: number }[],
  images: number,
  embeddingOf: (file: string) => Float32Array | null,
  defaultThreshold: number,
  msPerImage: number,
): PairFigures {
  const scored: ScoredPair[] = labelled.map((p) => {
    const a = embeddingOf(p.x);
    const b = embeddingOf(p.y);
    return { same: p.same, fold: p.fold, score: a && b ? similarity(a, b) : -1 };
  });
  const files = new Set(labelled.flatMap((p) => [p.x, p.y]));
  const kfold = kFoldAccuracy(scored);
  const figures: PairFigures = {
    pairs: scored.length,
    images,
    failed_to_detect: [...files].filter((f) => embeddingOf(f) === null).length,
    auc: round(auc(scored)),
    eer: round(equalErrorRate(scored)),
    tar_at_far_0: round(tarAtFar(scored, 0)),
    'tar_at_far_0.01': round(tarAtFar(scored, 0.01)),
    'tar_at_far_0.001': round(tarAtFar(scored, 0.001)),
    threshold: round(bestAccuracyThreshold(scored), 5),
    threshold_at_far_0: round(thresholdAtFar(scored, 0), 5),
    at_default_threshold: {
      threshold: defaultThreshold,
      tar: round(trueAcceptRate(scored, defaultThreshold)),
      far: round(falseAcceptRate(scored, defaultThreshold), 5),
    },
    ms_per_image: round(msPerImage, 1),
  };
  if (kfold) {
    figures.accuracy_kfold = round(kfold.mean);
    figures.accuracy_folds = kfold.folds.map((f) => round(f));
  }
  return figures;
}

/** A folder of people: one sub-folder each, image files inside, sorted by name (numbers in order). */
export function readPeople(dir: string, exclude: readonly string[] = []): { name: string; files: string[] }[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && !exclude.includes(d.name))
    .map((d) => ({
      name: d.name,
      files: fs
        .readdirSync(path.join(dir, d.name))
        .filter((f) => IMAGE_EXT.test(f))
        .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
        .map((f) => path.join(dir, d.name, f)),
    }))
    .filter((p) => p.files.length > 0);
}

/** Every image under a folder of strangers (flat, or one sub-folder per person). */
function readImagesUnder(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((d) => d.isFile() && IMAGE_EXT.test(d.name))
    .map((d) => path.join(d.parentPath, d.name))
    .sort();
}

/** One search of the gallery; `mate` is the probe's own person (undefined for a stranger). */
export function search(gallery: Gallery, probe: Float32Array | null | undefined, mate?: string): Search {
  const [first, second] = probe ? gallery.topTwo(probe) : [];
  return {
    mated: mate !== undefined,
    top1: first?.score ?? -1,
    top2: second?.score ?? -1,
    top1IsMate: mate !== undefined && first?.externalUserId === mate,
  };
}

export interface IdentifyFigures {
  people: number;
  enrolled: number;
  /** Mated searches: the other images of enrolled people. */
  probes: number;
  /** Non-mated searches: images of people who are not enrolled (`--strangers`). */
  strangers: number;
  failed_to_detect: number;
  /** Mated searches whose best match is their own template (whatever its score). */
  rank1: number | null;
  /** The rule in force for a gallery of this size: the threshold the service would use, and the margin. */
  threshold: number;
  margin: number;
  fnir: number | null;
  /** Null without strangers: only non-mated searches can measure it. */
  fpir: number | null;
  /** Mated searches named as somebody else at the threshold: must be 0. */
  false_identifications: number;
  /** The threshold reaching each target FPIR with these strangers, and the FNIR there. */
  at_target_fpir: { fpir: number; threshold: number | null; fnir: number | null; resolvable: boolean }[];
  ms_per_image: number | null;
}

/**
 * 1:N as NIST FRTE measures it: the first image (by name) of each person's folder is enrolled,
 * their other images are mated searches, and every image under `strangers` is a non-mated search.
 * `rule(gallerySize)` is the identification rule the service would apply to a gallery this size.
 */
export async function evaluateIdentify(
  analyzer: Analyzer,
  opts: { gallery: string; strangers?: string; exclude: string[]; concurrency: number; model?: ModelId; rule: (gallerySize: number) => Rule; targets?: number[] },
): Promise<IdentifyFigures> {
  const model = opts.model ?? PRIMARY_MODEL;
  const people = readPeople(opts.gallery, opts.exclude);
  const strangerFiles = opts.strangers ? readImagesUnder(opts.strangers) : [];
  const { embeddings, msPerImage } = await embedAll(analyzer, [...people.flatMap((p) => p.files), ...strangerFiles], opts.concurrency, [model]);
  const embeddingOf = (file: string) => embeddings.get(file)?.[model];
  const gallery = new Gallery({ dimensions: matcher(model).dimensions });
  for (const p of people) {
    const e = embeddingOf(p.files[0]);
    if (e) gallery.upsert(p.name, e);
  }
  const searches = [
    ...people.flatMap((p) => p.files.slice(1).map((file) => search(gallery, embeddingOf(file), p.name))),
    ...strangerFiles.map((file) => search(gallery, embeddingOf(file))),
  ];
  const rule = opts.rule(gallery.size);
  const mated = searches.filter((s) => s.mated);
  const hasStrangers = strangerFiles.length > 0;
  return {
    people: people.length,
    enrolled: gallery.size,
    probes: mated.length,
    strangers: strangerFiles.length,
    failed_to_detect: [...embeddings.values()].filter((e) => e === null).length,
    rank1: mated.length ? round(mated.filter((s) => s.top1IsMate).length / mated.length) : null,
    threshold: round(rule.threshold, 5) as number,
    margin: rule.margin,
    fnir: mated.length ? round(fnir(searches, rule)) : null,
    fpir: hasStrangers ? round(fpir(searches, rule), 5) : null,
    false_identifications: mated.filter((s) => !s.top1IsMate && names(s, rule)).length,
    at_target_fpir: (opts.targets ?? [0.001, 0.0001]).map((target) => {
      if (!hasStrangers) return { fpir: target, threshold: null, fnir: null, resolvable: false };
      const { threshold, resolvable } = thresholdForFpir(searches, target, rule.margin);
      return { fpir: target, threshold: round(threshold, 5), fnir: mated.length ? round(fnir(searches, { threshold, margin: rule.margin })) : null, resolvable };
    }),
    ms_per_image: round(msPerImage, 1),
  };
}
