/**
 * `npm run eval:identify`: 1:N against strangers on LFW (../shared/datasets/lfw, the 2,086 people
 * and 3,811 images of View 2 folds 1–5), in NIST FRTE 1:N terms.
 *
 * - Impostor tail: every image against the first image of every other person (≈ 8 million
 *   comparisons); log FAR against the score is fitted with a line (identification.ts). That fit
 *   is the service's threshold curve (`--write-tail` rewrites src/biometrics/impostor-tail.ts).
 * - Galleries of 100 and 1,000: `--trials` random splits of the people into enrolled (first image
 *   enrolled, their other images mated searches) and strangers (every image a non-mated search).
 *   FPIR and FNIR at the service's rule, the threshold that reaches FPIR 0.1 % and 0.01 % and
 *   FNIR there, and the effect of the ambiguity margin.
 * - A gallery of 5,000 cannot be built from 2,086 people: its figures are modelled from the tail
 *   (FPIR = 1 − (1 − FAR)^N) and from the genuine scores (FNIR), and marked so.
 * - Fusion: templates from two photos instead of one; probes and templates from three frames of a
 *   simulated capture (small shifts, scale, light, blur of one photo, made in memory) instead of one.
 *
 * Writes docs/eval/lfw-identify.json and docs/eval/lfw-identify-det.png. Embeddings can be kept in
 * `--cache <file>` between runs (they are not images; the file holds only vectors).
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { meanEmbedding } from '../src/biometrics/embedding.ts';
import { embedAll, readPeople, search } from '../src/biometrics/evaluation.ts';
import { Gallery } from '../src/biometrics/gallery.ts';
import { type Rule, type Search, detCurve, fitImpostorTail, fnir, fpir, modelledFpir, modelledThreshold, thresholdForFpir } from '../src/biometrics/identification.ts';
import { IdentifyPolicy } from '../src/biometrics/identify-policy.ts';
import { DEFAULT_ANALYZER_LIMITS, FaceAnalyzer } from '../src/biometrics/index.ts';
import { DEFAULT_QUALITY } from '../src/biometrics/quality.ts';
import { loadSettings } from '../src/config/settings.ts';
import { detPlotPng } from './det-plot.ts';

const { values: args } = parseArgs({
  options: {
    images: { type: 'string', default: path.resolve('..', 'shared', 'datasets', 'lfw', 'images') },
    cache: { type: 'string' },
    trials: { type: 'string', default: '10' },
    out: { type: 'string', default: path.resolve('docs', 'eval') },
    'write-tail': { type: 'boolean', default: false },
    'skip-frames': { type: 'boolean', default: false },
  },
});
if (!fs.existsSync(args.images)) {
  console.error(`eval:identify needs ${args.images} (../shared/datasets/lfw)`);
  process.exit(1);
}
const TRIALS = Number(args.trials);
const MEASURED_SIZES = [100, 1000];
const MODELLED_SIZE = 5000;
const TARGETS = [0.001, 0.0001];
const MARGINS = [0, 0.005, 0.01, 0.02];
const round = (x: number, d = 4) => Number(x.toFixed(d));
const log = (s: string) => process.stderr.write(`${s}\n`);

const settings = loadSettings();
const people = readPeople(args.images);
const analyzer = new FaceAnalyzer({ backend: settings.AUTHFACE_BACKEND, maxPixels: 25_000_000, quality: DEFAULT_QUALITY, ...DEFAULT_ANALYZER_LIMITS, frameTimeoutMs: 120_000, workers: 2, queueSize: 4 });
await analyzer.ready();

// ---- embeddings: one per image (cached), and three simulated capture frames per image used below
const files = people.flatMap((p) => p.files);
const embeddings = await embedWithCache(files);
const byPerson = new Map(people.map((p) => [p.name, p.files.map((f) => embeddings.get(f) ?? null)]));
log(`${people.length} people, ${files.length} images, ${[...embeddings.values()].filter((e) => !e).length} without a face`);

// ---- the impostor tail, over every image against every other person's first image
const firsts = people.map((p) => byPerson.get(p.name)?.[0] ?? null);
const impostor: number[] = [];
const genuine: number[] = [];
people.forEach((p, i) => {
  for (const [k, e] of (byPerson.get(p.name) ?? []).entries()) {
    if (!e) continue;
    if (k > 0 && firsts[i]) genuine.push(dot(e, firsts[i] as Float32Array));
    firsts.forEach((t, j) => {
      if (t && j !== i) impostor.push(dot(e, t));
    });
  }
});
const tail = fitImpostorTail(impostor);
const sortedImpostor = Float64Array.from(impostor).sort().reverse();
const measuredFarAt = (t: number) => countAtLeast(sortedImpostor, t) / sortedImpostor.length;
log(`tail fit over ${impostor.length} impostor comparisons: FAR(t) = exp(${tail.a.toFixed(2)} − ${tail.b.toFixed(2)}·t)`);
const policy = new IdentifyPolicy({ targetFpir: settings.AUTHFACE_TARGET_FPIR, minThreshold: settings.AUTHFACE_MATCH_THRESHOLD, margin: settings.AUTHFACE_IDENTIFY_MARGIN }, tail);

// ---- measured galleries
const random = mulberry32(20261126);
interface Split {
  enrolled: string[];
  strangers: string[];
}
const splits = (size: number): Split[] =>
  Array.from({ length: TRIALS }, () => {
    const names = shuffle(people.map((p) => p.name), random);
    return { enrolled: names.slice(0, size), strangers: names.slice(size) };
  });

/** The searches of one split: `template(name)` and `probes(name)` choose the fusion. */
function searchesOf(split: Split, template: (name: string) => Float32Array | null, probes: (name: string, mated: boolean) => (Float32Array | null)[]): Search[] {
  const gallery = new Gallery();
  const mates = new Set<string>();
  for (const name of split.enrolled) {
    const t = template(name);
    if (t) {
      gallery.upsert(name, t);
      mates.add(name);
    }
  }
  return [
    ...split.enrolled.filter((n) => mates.has(n)).flatMap((name) => probes(name, true).map((p) => search(gallery, p, name))),
    ...split.strangers.flatMap((name) => probes(name, false).map((p) => search(gallery, p))),
  ];
}
const single = {
  template: (name: string) => byPerson.get(name)?.[0] ?? null,
  probes: (name: string, mated: boolean) => (byPerson.get(name) ?? []).slice(mated ? 1 : 0),
};

interface Figures {
  gallery: number;
  mated: number;
  non_mated: number;
  rule: Rule;
  fpir: number;
  fnir: number;
  at_target: { fpir: number; threshold: number; fnir: number; resolvable: boolean }[];
}

function figures(gallery: number, searches: Search[], rule: Rule): Figures {
  return {
    gallery,
    mated: searches.filter((s) => s.mated).length,
    non_mated: searches.filter((s) => !s.mated).length,
    rule: { threshold: round(rule.threshold, 5), margin: rule.margin },
    fpir: round(fpir(searches, rule), 5),
    fnir: round(fnir(searches, rule)),
    at_target: TARGETS.map((target) => {
      const { threshold, resolvable } = thresholdForFpir(searches, target, rule.margin);
      return { fpir: target, threshold: round(threshold, 5), fnir: round(fnir(searches, { threshold, margin: rule.margin })), resolvable };
    }),
  };
}

const measured = MEASURED_SIZES.map((size) => {
  const searches = splits(size).flatMap((s) => searchesOf(s, single.template, single.probes));
  const rule = policy.rule(size);
  const byMargin = MARGINS.map((margin) => ({ margin, ...figures(size, searches, { threshold: rule.threshold, margin }) }));
  log(`gallery ${size}: ${JSON.stringify(figures(size, searches, rule))}`);
  return { size, searches, rule, figures: figures(size, searches, rule), byMargin };
});

// ---- the modelled gallery: FPIR from the tail, FNIR from the genuine scores (rank errors ignored)
const modelled = (() => {
  const rule = policy.rule(MODELLED_SIZE);
  const frr = (t: number) => genuine.filter((g) => g < t).length / genuine.length;
  return {
    gallery: MODELLED_SIZE,
    modelled: true,
    rule: { threshold: round(rule.threshold, 5), margin: rule.margin },
    fpir: round(modelledFpir(tail, rule.threshold, MODELLED_SIZE), 5),
    fnir: round(frr(rule.threshold)),
    at_target: TARGETS.map((target) => {
      const threshold = modelledThreshold(tail, target, MODELLED_SIZE);
      return { fpir: target, threshold: round(threshold, 5), fnir: round(frr(threshold)), resolvable: false };
    }),
    curve: Array.from({ length: 60 }, (_, i) => 0.9 + i * 0.0015).map((t) => ({ fpir: modelledFpir(tail, t, MODELLED_SIZE), fnir: frr(t) })),
  };
})();

// the model checked against what was measured: modelled FPIR at each measured gallery's rule
const modelCheck = measured.map((m) => ({ gallery: m.size, threshold: round(m.rule.threshold, 5), measured_fpir: m.figures.fpir, modelled_fpir: round(modelledFpir(tail, m.rule.threshold, m.size), 5), measured_at_margin_0: round(fpir(m.searches, { threshold: m.rule.threshold, margin: 0 }), 5) }));

// ---- fusion of photos: two photos per template where the person has three or more
const fusionSplits = splits(1000);
const eligible = (name: string) => (byPerson.get(name) ?? []).filter(Boolean).length >= 3;
const photoFusion = (() => {
  const probes = (name: string, mated: boolean) => (byPerson.get(name) ?? []).slice(mated ? 2 : 0);
  const onlyEligible = (s: Split): Split => ({ enrolled: s.enrolled.filter(eligible), strangers: s.strangers });
  const one = fusionSplits.flatMap((s) => searchesOf(onlyEligible(s), single.template, probes));
  const two = fusionSplits.flatMap((s) =>
    searchesOf(onlyEligible(s), (name) => meanEmbedding((byPerson.get(name) ?? []).slice(0, 2).filter((e): e is Float32Array => e !== null)), probes),
  );
  const size = onlyEligible(fusionSplits[0]).enrolled.length;
  const rule = policy.rule(size);
  return { gallery: size, one_photo: figures(size, one, rule), two_photos: figures(size, two, rule) };
})();

// ---- fusion of capture frames (simulated from one photo each; 500 enrolled, 1,000 strangers)
const frameFusion = args['skip-frames'] ? null : await (async () => {
  const names = shuffle(people.filter((p) => p.files.length >= 2).map((p) => p.name), random).slice(0, 500);
  const strangerNames = shuffle(people.filter((p) => !names.includes(p.name)).map((p) => p.name), random).slice(0, 1000);
  const frameFiles = [...names.flatMap((n) => people.find((p) => p.name === n)?.files.slice(0, 2) ?? []), ...strangerNames.map((n) => people.find((p) => p.name === n)?.files[0] as string)];
  log(`simulated capture frames: 3 × ${frameFiles.length} images`);
  const frames = new Map<string, (Float32Array | null)[]>();
  let done = 0;
  await Promise.all(
    [0, 1].map(async (w) => {
      for (let i = w; i < frameFiles.length; i += 2) {
        const bytes = fs.readFileSync(frameFiles[i]);
        const list: (Float32Array | null)[] = [];
        for (let k = 0; k < 3; k++) list.push((await analyzer.analyze(await jitter(bytes, mulberry32(i * 3 + k)), { mode: 'photo' })).embedding);
        frames.set(frameFiles[i], list);
        if (++done % 200 === 0) log(`  ${done}/${frameFiles.length}`);
      }
    }),
  );
  const fileOf = (name: string, k: number) => people.find((p) => p.name === name)?.files[k] as string;
  const split: Split = { enrolled: names, strangers: strangerNames };
  const fused = (list: (Float32Array | null)[] | undefined) => {
    const usable = (list ?? []).filter((e): e is Float32Array => e !== null);
    return usable.length ? meanEmbedding(usable) : null;
  };
  const oneFrame = searchesOf(split, (n) => frames.get(fileOf(n, 0))?.[0] ?? null, (n, mated) => [frames.get(fileOf(n, mated ? 1 : 0))?.[0] ?? null]);
  const threeFrames = searchesOf(split, (n) => fused(frames.get(fileOf(n, 0))), (n, mated) => [fused(frames.get(fileOf(n, mated ? 1 : 0)))]);
  const rule = policy.rule(names.length);
  return { gallery: names.length, one_frame: figures(names.length, oneFrame, rule), three_frames: figures(names.length, threeFrames, rule) };
})();
await analyzer.close();

// ---- outputs
const report = {
  dataset: { people: people.length, images: files.length, mated_genuine_comparisons: genuine.length, impostor_comparisons: impostor.length },
  settings: { target_fpir: settings.AUTHFACE_TARGET_FPIR, verify_threshold: settings.AUTHFACE_MATCH_THRESHOLD, margin: settings.AUTHFACE_IDENTIFY_MARGIN },
  tail: { ...tail, a: round(tail.a, 3), b: round(tail.b, 3), from: round(tail.from, 5) },
  far_at_verify_threshold: { measured: round(measuredFarAt(settings.AUTHFACE_MATCH_THRESHOLD), 7) },
  trials: TRIALS,
  galleries: [...measured.map((m) => ({ ...m.figures, modelled: false })), { ...modelled, curve: undefined }],
  margins: measured.map((m) => ({ gallery: m.size, rows: m.byMargin })),
  model_check: modelCheck,
  fusion: { photos: photoFusion, frames: frameFusion },
};
fs.mkdirSync(args.out, { recursive: true });
fs.writeFileSync(path.join(args.out, 'lfw-identify.json'), `${JSON.stringify(report, null, 2)}\n`);
await detPlotPng(
  'Auth Face 1:N on LFW: strangers vs enrolled',
  [
    ...measured.map((m, i) => ({
      label: `${m.size} enrolled`,
      colour: ['#1f77b4', '#d62728'][i],
      points: detCurve(m.searches, m.rule.margin),
      marker: { fpir: m.figures.fpir, fnir: m.figures.fnir },
    })),
    { label: `${MODELLED_SIZE} (modelled)`, colour: '#2ca02c', dashed: true, points: modelled.curve, marker: { fpir: modelled.fpir, fnir: modelled.fnir } },
  ],
  path.join(args.out, 'lfw-identify-det.png'),
);
if (args['write-tail']) {
  fs.writeFileSync(
    path.resolve('src', 'biometrics', 'impostor-tail.ts'),
    `// generated by scripts/eval-identify-lfw.ts (npm run eval:identify -- --write-tail): do not edit\nimport type { ImpostorTail } from './identification.ts';\n\n` +
      `/** ln FAR = a − b·t, fitted on ${impostor.length} LFW impostor comparisons between FAR ${tail.fittedFrom} and ${tail.fittedTo}. */\n` +
      `export const LFW_IMPOSTOR_TAIL: ImpostorTail = ${JSON.stringify(report.tail)};\n`,
  );
}
console.log(JSON.stringify({ galleries: report.galleries, model_check: modelCheck, fusion: report.fusion }, null, 2));

// ---- helpers
function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function countAtLeast(descending: Float64Array, t: number): number {
  let lo = 0;
  let hi = descending.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (descending[mid] >= t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle<T>(list: T[], rand: () => number): T[] {
  const out = [...list];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** One simulated capture frame of a photo: shifted, rescaled, re-lit and slightly blurred (in memory only). */
async function jitter(bytes: Buffer, rand: () => number): Promise<Uint8Array> {
  const meta = await sharp(bytes).metadata();
  const w = meta.width ?? 250;
  const h = meta.height ?? 250;
  const scale = 0.92 + rand() * 0.07;
  const cw = Math.round(w * scale);
  const ch = Math.round(h * scale);
  const left = Math.round(rand() * (w - cw));
  const top = Math.round(rand() * (h - ch));
  const out = await sharp(bytes)
    .extract({ left, top, width: cw, height: ch })
    .resize(w, h)
    .modulate({ brightness: 0.85 + rand() * 0.3 })
    .blur(0.3 + rand() * 0.7)
    .jpeg({ quality: 80 })
    .toBuffer();
  return new Uint8Array(out);
}

/** Embeds every image once; `--cache` keeps the vectors (keyed by path and size) between runs. */
async function embedWithCache(list: string[]): Promise<Map<string, Float32Array | null>> {
  const key = (f: string) => `${path.relative(args.images, f)}:${fs.statSync(f).size}`;
  const cached: Record<string, string | null> = args.cache && fs.existsSync(args.cache) ? JSON.parse(fs.readFileSync(args.cache, 'utf8')) : {};
  const missing = list.filter((f) => !(key(f) in cached));
  if (missing.length) {
    log(`embedding ${missing.length} images (about ${Math.round((missing.length * 0.075) / 60)} min on two workers)`);
    const { embeddings } = await embedAll(analyzer, missing, 2, (done, total) => {
      if (done % 500 === 0 || done === total) log(`  ${done}/${total}`);
    });
    for (const [f, e] of embeddings) cached[key(f)] = e ? Buffer.from(e.buffer, e.byteOffset, e.byteLength).toString('base64') : null;
    if (args.cache) fs.writeFileSync(args.cache, JSON.stringify(cached));
  }
  return new Map(
    list.map((f) => {
      const v = cached[key(f)];
      if (!v) return [f, null];
      const b = Buffer.from(v, 'base64');
      return [f, new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength))];
    }),
  );
}
