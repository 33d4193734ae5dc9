/**
 * `npm run eval:identify`: 1:N against strangers on LFW (../shared/datasets/lfw, the 2,086 people
 * and 3,811 images of View 2 folds 1–5), in NIST FRTE 1:N terms, for every model the service runs
 * (matchers/index.ts), each at its own thresholds.
 *
 * - Impostor tail: every image against the first image of every other person (≈ 8 million
 *   comparisons); log FAR against the score is fitted with a line (identification.ts). That fit
 *   is the service's threshold curve (`--write-tail` rewrites src/biometrics/matchers/impostor-tails.ts).
 * - All pairs: every pair of images of two different people (≈ 7.3 million) and of the same
 *   person; the genuine pairs accepted at FAR 1e-4 and 1e-5.
 * - Galleries of 100 and 1,000: `--trials` random splits of the people into enrolled (first image
 *   enrolled, their other images mated searches) and strangers (every image a non-mated search).
 *   FPIR and FNIR at the service's rule, the threshold that reaches FPIR 0.1 % and 0.01 % and
 *   FNIR there, and the effect of the ambiguity margin.
 * - A gallery of 5,000 cannot be built from 2,086 people: its figures are modelled from the tail
 *   (FPIR = 1 − (1 − FAR)^N) and from the genuine scores (FNIR), and marked so.
 *   Galleries up to 100,000 are modelled at the rule alone; the largest whose FNIR stays within
 *   40 % is `face_only_limit`, the default of AUTHFACE_FACE_ONLY_MAX_GALLERY.
 * - Templates from several photos (people with three or more): one photo, the mean of two, the
 *   best of two templates, and a guarded adaptive update (the second photo joins only when it is
 *   identified and scores at least a floor against the first).
 * - Fusion: probes and templates from three frames of a simulated capture (small shifts, scale,
 *   light, blur of one photo, made in memory) instead of one; and the scores of the two models
 *   fused, with the weight chosen on half of the people by FNIR at FPIR 0.1 %.
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
import { type ImpostorTail, type Rule, type Search, detCurve, fitImpostorTail, fnir, fpir, modelledFpir, modelledThreshold, thresholdForFpir } from '../src/biometrics/identification.ts';
import { IdentifyPolicy } from '../src/biometrics/identify-policy.ts';
import { DEFAULT_ANALYZER_LIMITS, FaceAnalyzer } from '../src/biometrics/index.ts';
import { type Embeddings, type ModelId, DLIB_RESNET, MATCHERS, MOBILEFACENET, PRIMARY_MODEL, matcher } from '../src/biometrics/matchers/index.ts';
import { DEFAULT_QUALITY } from '../src/biometrics/quality.ts';
import { loadSettings } from '../src/config/settings.ts';
import { decisionThresholds } from '../src/sessions/decisions.ts';
import { detPlotPng } from './det-plot.ts';

const { values: args } = parseArgs({
  options: {
    images: { type: 'string', default: path.resolve('..', 'shared', 'datasets', 'lfw', 'images') },
    cache: { type: 'string' },
    trials: { type: 'string', default: '10' },
    out: { type: 'string', default: path.resolve('docs', 'eval') },
    'write-tail': { type: 'boolean', default: false },
    'skip-frames': { type: 'boolean', default: false },
    'as-labelled': { type: 'boolean', default: false },
  },
});
if (!fs.existsSync(args.images)) {
  console.error(`eval:identify needs ${args.images} (../shared/datasets/lfw)`);
  process.exit(1);
}
const TRIALS = Number(args.trials);
const MEASURED_SIZES = [100, 1000];
const MODELLED_SIZE = 5000;
/** Larger galleries, modelled the same way: where face alone stops being enough (AUTHFACE_FACE_ONLY_MAX_GALLERY). */
const LARGER_SIZES = [5000, 10_000, 20_000, 30_000, 50_000, 100_000];
/** The FNIR at the rule this project accepts for a face-only door (its target at 1,000 people). */
const FACE_ONLY_MAX_FNIR = 0.4;
const TARGETS = [0.001, 0.0001];
/** The lowest scores (against the enrolment photo) at which a door capture may join a template, tried in the adaptive update. */
const ADAPT_FLOORS = [0, 0.5, 0.6, 0.7];
const MARGINS = [0, 0.01, 0.02, 0.03, 0.05];
const MODELS = MATCHERS.map((m) => m.id);
const round = (x: number, d = 4) => Number(x.toFixed(d));
const log = (s: string) => process.stderr.write(`${s}\n`);

/** A gallery holding one or more templates per person; a person scores their best template. */
class MultiGallery {
  readonly #gallery: Gallery;
  readonly #owner: string[] = [];
  constructor(dimensions: number) {
    this.#gallery = new Gallery({ dimensions });
  }
  add(name: string, templates: Float32Array[]): void {
    templates.forEach((t, k) => {
      this.#gallery.upsert(`${name}\u0000${k}`, t);
      this.#owner.push(name);
    });
  }
  /** The best two *people* (a person's second template is not their runner-up). */
  search(probe: Float32Array | null | undefined, mate?: string): Search {
    if (!probe) return search(this.#gallery, null, mate);
    const best = new Map<string, number>();
    for (const m of this.#gallery.top(probe, 4)) {
      const person = m.externalUserId.split('\u0000')[0];
      if (!best.has(person)) best.set(person, m.score);
    }
    const [first, second] = [...best].sort((a, b) => b[1] - a[1]);
    return { mated: mate !== undefined, top1: first?.[1] ?? -1, top2: second?.[1] ?? -1, top1IsMate: mate !== undefined && first?.[0] === mate };
  }
}

/** The k largest of a stream of numbers (the impostor tail of millions of pairs without sorting them all). */
class TopK {
  #heap: number[] = [];
  constructor(readonly k: number) {}
  push(x: number): void {
    const h = this.#heap;
    if (h.length < this.k) {
      h.push(x);
      if (h.length === this.k) h.sort((a, b) => a - b);
      return;
    }
    if (x <= h[0]) return;
    // h is kept sorted ascending: drop the smallest, insert x in place
    let i = 1;
    while (i < h.length && h[i] < x) {
      h[i - 1] = h[i];
      i++;
    }
    h[i - 1] = x;
  }
  /** The n-th largest (0 = the largest). */
  nth(n: number): number {
    const sorted = [...this.#heap].sort((a, b) => b - a);
    return sorted[Math.min(n, sorted.length - 1)];
  }
}

const settings = loadSettings();
const thresholds = decisionThresholds(settings.AUTHFACE_TARGET_FPIR, { match: settings.AUTHFACE_MATCH_THRESHOLD, duplicate: settings.AUTHFACE_DUPLICATE_THRESHOLD, margin: settings.AUTHFACE_IDENTIFY_MARGIN });
/**
 * LFW's labels where they are plainly wrong, found by this evaluation (the highest-scoring
 * "impostor" pairs of both models): one person filed under two spellings of their name, and one
 * photo filed under two people (the same pixels, mean difference 6.5 of 255). The people are merged
 * and the second copy of the photo dropped; `--as-labelled` keeps LFW as it is. The all-pairs
 * figures are given both ways.
 */
const SAME_PERSON = [
  ['Hasan_Wirayuda', 'Hassan_Wirajuda'],
  ['Chyung_Dai-chul', 'Dai_Chul_Chyung'],
  ['Cristina_Fernandez', 'Cristina_Kirchner'],
];
const DUPLICATE_PHOTOS = ['Martha_Bowen/Martha_Bowen_0002.jpg']; // = Gabrielle_Rose/Gabrielle_Rose_0001.jpg
const labelled = readPeople(args.images);
const people = args['as-labelled'] ? labelled : corrected(labelled);
const analyzer = new FaceAnalyzer({ backend: settings.AUTHFACE_BACKEND, maxPixels: 25_000_000, quality: DEFAULT_QUALITY, ...DEFAULT_ANALYZER_LIMITS, frameTimeoutMs: 120_000, workers: 2, queueSize: 4 });
await analyzer.ready();

// ---- embeddings: one per image and model (cached), and three simulated capture frames per image used below
const files = labelled.flatMap((p) => p.files);
const embeddings = await embedWithCache(files);
log(`${people.length} people, ${files.length} images, ${[...embeddings.values()].filter((e) => !e).length} without a face`);
const random = mulberry32(20261126);

interface Split {
  enrolled: string[];
  strangers: string[];
}
const splits = (size: number, names = people.map((p) => p.name)): Split[] =>
  Array.from({ length: TRIALS }, () => {
    const shuffled = shuffle(names, random);
    return { enrolled: shuffled.slice(0, size), strangers: shuffled.slice(size) };
  });

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

/** FNIR at FPIR 0.1 % (the threshold chosen on these very strangers): the tail criterion. */
const fnirAtTarget = (searches: Search[], margin: number) => fnir(searches, { threshold: thresholdForFpir(searches, 0.001, margin).threshold, margin });

/** Everything one model gives on LFW. */
function evaluateModel(model: ModelId) {
  const policy = thresholds[model].identify;
  const byPerson = new Map(people.map((p) => [p.name, p.files.map((f) => embeddings.get(f)?.[model] ?? null)]));
  const first = (name: string) => byPerson.get(name)?.[0] ?? null;

  // the impostor tail, over every image against every other person's first image
  const firsts = people.map((p) => first(p.name));
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
  log(`${model}: tail fit over ${impostor.length} impostor comparisons: FAR(t) = exp(${tail.a.toFixed(2)} − ${tail.b.toFixed(2)}·t)`);
  // the rule as this run's own fit gives it (the shipped one is the last --write-tail's)
  const fitted = new IdentifyPolicy(policy.options, tail);

  // every pair of images: same person (genuine) and different people (impostor), as LFW labels them and corrected
  const allPairs = (list: typeof people) => {
    const items = list.flatMap((p, pi) => p.files.flatMap((f) => (embeddings.get(f)?.[model] ? [{ pi, e: embeddings.get(f)?.[model] as Float32Array }] : [])));
    const same: number[] = [];
    const top = new TopK(1000);
    let different = 0;
    for (let i = 0; i < items.length; i++) {
      for (let j = i + 1; j < items.length; j++) {
        const score = dot(items[i].e, items[j].e);
        if (items[i].pi === items[j].pi) same.push(score);
        else {
          different++;
          top.push(score);
        }
      }
    }
    const atFar = (far: number) => {
      const threshold = top.nth(Math.floor(far * different)) + 1e-9;
      return { far, threshold: round(threshold, 5), tar: round(same.filter((g) => g >= threshold).length / same.length) };
    };
    return { genuine_pairs: same.length, impostor_pairs: different, at: [atFar(1e-4), atFar(1e-5)] };
  };
  const pairs = { as_labelled: allPairs(labelled), corrected: allPairs(corrected(labelled)) };
  log(`${model}: all pairs ${JSON.stringify(pairs)}`);

  /** The searches of one split: `template(name)` and `probes(name)` choose the fusion. */
  const searchesOf = (split: Split, template: (name: string) => Float32Array[] | null, probes: (name: string, mated: boolean) => (Float32Array | null)[]): Search[] => {
    const gallery = new MultiGallery(matcher(model).dimensions);
    const mates = new Set<string>();
    for (const name of split.enrolled) {
      const t = template(name);
      if (t && t.length) {
        gallery.add(name, t);
        mates.add(name);
      }
    }
    return [
      ...split.enrolled.filter((n) => mates.has(n)).flatMap((name) => probes(name, true).map((p) => gallery.search(p, name))),
      ...split.strangers.flatMap((name) => probes(name, false).map((p) => gallery.search(p))),
    ];
  };
  const single = {
    template: (name: string) => (first(name) ? [first(name) as Float32Array] : null),
    probes: (name: string, mated: boolean) => (byPerson.get(name) ?? []).slice(mated ? 1 : 0),
  };
  const measured = MEASURED_SIZES.map((size) => {
    const searches = splits(size).flatMap((s) => searchesOf(s, single.template, single.probes));
    const rule = policy.rule(size);
    const byMargin = MARGINS.map((margin) => ({ margin, ...figures(size, searches, { threshold: rule.threshold, margin }) }));
    log(`${model}: gallery ${size}: ${JSON.stringify(figures(size, searches, rule))}`);
    return { size, searches, rule, figures: figures(size, searches, rule), byMargin };
  });

  // the modelled gallery: FPIR from the tail, FNIR from the genuine scores (rank errors ignored)
  const modelled = (() => {
    const rule = fitted.rule(MODELLED_SIZE);
    const frr = (t: number) => genuine.filter((g) => g < t).length / genuine.length;
    const from = modelledThreshold(tail, 0.5, MODELLED_SIZE);
    const to = modelledThreshold(tail, 1e-5, MODELLED_SIZE);
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
      curve: Array.from({ length: 60 }, (_, i) => from + ((to - from) * i) / 59).map((t) => ({ fpir: modelledFpir(tail, t, MODELLED_SIZE), fnir: frr(t) })),
    };
  })();
  // the largest gallery (on LARGER_SIZES) whose modelled FNIR at the rule stays within FACE_ONLY_MAX_FNIR
  const larger = LARGER_SIZES.map((size) => {
    const threshold = fitted.rule(size).threshold;
    return { gallery: size, threshold: round(threshold, 5), fpir: round(modelledFpir(tail, threshold, size), 5), fnir: round(genuine.filter((g) => g < threshold).length / genuine.length) };
  });
  const faceOnlyLimit = { max_fnir: FACE_ONLY_MAX_FNIR, gallery: larger.filter((g) => g.fnir <= FACE_ONLY_MAX_FNIR).at(-1)?.gallery ?? null };
  const modelCheck = measured.map((m) => ({ gallery: m.size, threshold: round(m.rule.threshold, 5), measured_fpir: m.figures.fpir, modelled_fpir: round(modelledFpir(tail, m.rule.threshold, m.size), 5), measured_at_margin_0: round(fpir(m.searches, { threshold: m.rule.threshold, margin: 0 }), 5) }));

  // templates from several photos: people with three or more, probes from the third photo on
  const photoSplits = splits(1000);
  const eligible = (name: string) => (byPerson.get(name) ?? []).filter(Boolean).length >= 3;
  const photos = (() => {
    const probes = (name: string, mated: boolean) => (byPerson.get(name) ?? []).slice(mated ? 2 : 0);
    const onlyEligible = (s: Split): Split => ({ enrolled: s.enrolled.filter(eligible), strangers: s.strangers });
    const two = (name: string) => (byPerson.get(name) ?? []).slice(0, 2).filter((e): e is Float32Array => e !== null);
    const run = (template: (name: string) => Float32Array[] | null) => photoSplits.flatMap((s) => searchesOf(onlyEligible(s), template, probes));
    const size = onlyEligible(photoSplits[0]).enrolled.length;
    const rule = policy.rule(size);
    const one = run(single.template);
    const mean = run((name) => [meanEmbedding(two(name))]);
    const best = run(two);
    // a guarded adaptive update: the second photo, as a door capture, joins the template only when
    // it is identified at the rule and scores at least `floor` against the enrolment photo
    const cosine = (a: Float32Array, b: Float32Array) => a.reduce((sum, v, i) => sum + v * b[i], 0);
    const adaptive = ADAPT_FLOORS.map((floor) => {
      const joins = (name: string) => {
        const [first, second] = two(name);
        return second !== undefined && cosine(first, second) >= Math.max(floor, rule.threshold);
      };
      const people = onlyEligible(photoSplits[0]).enrolled;
      return {
        floor,
        joined: round(people.filter(joins).length / people.length),
        mean: figures(size, run((name) => (joins(name) ? [meanEmbedding(two(name))] : two(name).slice(0, 1))), rule),
        best: figures(size, run((name) => (joins(name) ? two(name) : two(name).slice(0, 1))), rule),
      };
    });
    return { gallery: size, rule_gallery_size: size, one_photo: figures(size, one, rule), mean_of_two: figures(size, mean, rule), best_of_two: figures(size, best, rule), adaptive };
  })();
  return { model, policy, fitted, tail, sortedImpostor, genuine, allPairs: pairs, measured, modelled, larger, faceOnlyLimit, modelCheck, photos, byPerson };
}

const results = MODELS.map(evaluateModel);
const resultOf = (model: ModelId) => results.find((r) => r.model === model) as (typeof results)[number];

// ---- score fusion of the two models: w·z(new) + (1 − w)·z(old), z = b·s − a (−ln FAR from each tail)
const fusion = (() => {
  const [nu, old] = [resultOf(MOBILEFACENET.id), resultOf(DLIB_RESNET.id)];
  const z = (tail: ImpostorTail, s: number) => tail.b * s - tail.a;
  const names = shuffle(people.map((p) => p.name), mulberry32(7));
  const half = new Set(names.slice(0, names.length >> 1));
  const searchesFor = (split: Split, w: number): Search[] => {
    const enrolled = split.enrolled.filter((n) => nu.byPerson.get(n)?.[0] && old.byPerson.get(n)?.[0]);
    const newT = enrolled.map((n) => nu.byPerson.get(n)?.[0] as Float32Array);
    const oldT = enrolled.map((n) => old.byPerson.get(n)?.[0] as Float32Array);
    const one = (name: string, k: number, mate?: string): Search => {
      const pn = nu.byPerson.get(name)?.[k];
      const po = old.byPerson.get(name)?.[k];
      if (!pn || !po) return { mated: mate !== undefined, top1: -Infinity, top2: -Infinity, top1IsMate: false };
      let [b1, b2, who] = [-Infinity, -Infinity, -1];
      for (let i = 0; i < enrolled.length; i++) {
        const f = w * z(nu.tail, dot(pn, newT[i])) + (1 - w) * z(old.tail, dot(po, oldT[i]));
        if (f > b1) [b2, b1, who] = [b1, f, i];
        else if (f > b2) b2 = f;
      }
      return { mated: mate !== undefined, top1: b1, top2: b2, top1IsMate: mate !== undefined && enrolled[who] === mate };
    };
    return [
      ...enrolled.flatMap((name) => (nu.byPerson.get(name) ?? []).slice(1).map((_, k) => one(name, k + 1, name))),
      ...split.strangers.flatMap((name) => (nu.byPerson.get(name) ?? []).map((_, k) => one(name, k))),
    ];
  };
  const weights = [1, 0.9, 0.8, 0.7, 0.6, 0.5];
  // the weight is chosen on half of the people (galleries of 500 from them), by the tail criterion
  const train = splits(500, [...half]);
  const trained = weights.map((w) => ({ w, fnir_at_fpir_0001: round(train.map((s) => fnirAtTarget(searchesFor(s, w), 0)).reduce((a, b) => a + b, 0) / train.length) }));
  const chosen = trained.reduce((a, b) => (b.fnir_at_fpir_0001 < a.fnir_at_fpir_0001 ? b : a));
  // then measured on the other half (galleries of 500) and on everyone (galleries of 1,000)
  const test = splits(500, names.filter((n) => !half.has(n)));
  const onTest = (w: number) => round(test.map((s) => fnirAtTarget(searchesFor(s, w), 0)).reduce((a, b) => a + b, 0) / test.length);
  const thousand = splits(1000);
  const at1000 = (w: number) => round(thousand.map((s) => fnirAtTarget(searchesFor(s, w), 0)).reduce((a, b) => a + b, 0) / thousand.length);
  const result = {
    weights_on_training_half: trained,
    chosen_weight: chosen.w,
    held_out_half_500: { new_model_alone: onTest(1), fused: onTest(chosen.w) },
    everyone_1000: { new_model_alone: at1000(1), fused: at1000(chosen.w) },
  };
  log(`fusion: ${JSON.stringify(result)}`);
  return { ...result, kept: result.everyone_1000.new_model_alone - result.everyone_1000.fused >= 0.02 };
})();

// ---- fusion of capture frames (simulated from one photo each; 500 enrolled, 1,000 strangers)
const frameFusion = args['skip-frames'] ? null : await (async () => {
  const names = shuffle(people.filter((p) => p.files.length >= 2).map((p) => p.name), random).slice(0, 500);
  const strangerNames = shuffle(people.filter((p) => !names.includes(p.name)).map((p) => p.name), random).slice(0, 1000);
  const frameFiles = [...names.flatMap((n) => people.find((p) => p.name === n)?.files.slice(0, 2) ?? []), ...strangerNames.map((n) => people.find((p) => p.name === n)?.files[0] as string)];
  log(`simulated capture frames: 3 × ${frameFiles.length} images`);
  const frames = new Map<string, Embeddings[]>();
  let done = 0;
  await Promise.all(
    [0, 1].map(async (w) => {
      for (let i = w; i < frameFiles.length; i += 2) {
        const bytes = fs.readFileSync(frameFiles[i]);
        const list: Embeddings[] = [];
        for (let k = 0; k < 3; k++) list.push((await analyzer.analyze(await jitter(bytes, mulberry32(i * 3 + k)), { mode: 'photo', models: MODELS })).embeddings);
        frames.set(frameFiles[i], list);
        if (++done % 200 === 0) log(`  ${done}/${frameFiles.length}`);
      }
    }),
  );
  const fileOf = (name: string, k: number) => people.find((p) => p.name === name)?.files[k] as string;
  const split: Split = { enrolled: names, strangers: strangerNames };
  return Object.fromEntries(
    MODELS.map((model) => {
      const of = (file: string) => (frames.get(file) ?? []).map((e) => e[model] ?? null);
      const fused = (list: (Float32Array | null)[]) => {
        const usable = list.filter((e): e is Float32Array => e !== null);
        return usable.length ? meanEmbedding(usable) : null;
      };
      const gallery = (template: (n: string) => Float32Array | null, probe: (n: string, mated: boolean) => Float32Array | null) => {
        const g = new MultiGallery(matcher(model).dimensions);
        for (const n of split.enrolled) {
          const t = template(n);
          if (t) g.add(n, [t]);
        }
        return [...split.enrolled.map((n) => g.search(probe(n, true), n)), ...split.strangers.map((n) => g.search(probe(n, false)))];
      };
      const oneFrame = gallery((n) => of(fileOf(n, 0))[0], (n, mated) => of(fileOf(n, mated ? 1 : 0))[0]);
      const threeFrames = gallery((n) => fused(of(fileOf(n, 0))), (n, mated) => fused(of(fileOf(n, mated ? 1 : 0))));
      const rule = thresholds[model].identify.rule(names.length);
      return [model, { gallery: names.length, one_frame: figures(names.length, oneFrame, rule), three_frames: figures(names.length, threeFrames, rule) }];
    }),
  );
})();
await analyzer.close();

// ---- outputs
const report = {
  dataset: { people: people.length, images: people.reduce((n, p) => n + p.files.length, 0), labels: args['as-labelled'] ? 'as labelled' : { same_person: SAME_PERSON, duplicate_photos_dropped: DUPLICATE_PHOTOS } },
  settings: { target_fpir: settings.AUTHFACE_TARGET_FPIR, primary_model: PRIMARY_MODEL },
  trials: TRIALS,
  models: Object.fromEntries(
    results.map((r) => [
      r.model,
      {
        thresholds: { match: thresholds[r.model].match, duplicate: thresholds[r.model].duplicate, margin: r.policy.options.margin },
        mated_genuine_comparisons: r.genuine.length,
        impostor_comparisons: r.sortedImpostor.length,
        tail: roundTail(r.tail),
        far_at_verify_threshold: round(countAtLeast(r.sortedImpostor, thresholds[r.model].match) / r.sortedImpostor.length, 7),
        all_pairs: r.allPairs,
        galleries: [...r.measured.map((m) => ({ ...m.figures, modelled: false })), { ...r.modelled, curve: undefined }],
        larger_galleries_at_rule: r.larger,
        face_only_limit: r.faceOnlyLimit,
        margins: r.measured.map((m) => ({ gallery: m.size, rows: m.byMargin })),
        model_check: r.modelCheck,
        templates_from_photos: r.photos,
      },
    ]),
  ),
  score_fusion: fusion,
  frame_fusion: frameFusion,
};
fs.mkdirSync(args.out, { recursive: true });
fs.writeFileSync(path.join(args.out, 'lfw-identify.json'), `${JSON.stringify(report, null, 2)}\n`);
const colours = ['#1f77b4', '#d62728'];
await detPlotPng(
  'Auth Face 1:N on LFW (solid: MobileFaceNet, dashed: dlib)',
  results.flatMap((r) => [
    ...r.measured.map((m, i) => ({
      label: `${m.size} enrolled${r.model === PRIMARY_MODEL ? '' : ' (dlib)'}`,
      colour: colours[i],
      dashed: r.model !== PRIMARY_MODEL,
      points: detCurve(m.searches, m.rule.margin),
      marker: { fpir: m.figures.fpir, fnir: m.figures.fnir },
    })),
    ...(r.model === PRIMARY_MODEL ? [{ label: `${MODELLED_SIZE} (modelled)`, colour: '#2ca02c', dashed: true, points: r.modelled.curve, marker: { fpir: r.modelled.fpir, fnir: r.modelled.fnir } }] : []),
  ]),
  path.join(args.out, 'lfw-identify-det.png'),
);
if (args['write-tail']) {
  const lines = results.map((r) => `  '${r.model}': ${JSON.stringify(roundTail(r.tail))},`);
  fs.writeFileSync(
    path.resolve('src', 'biometrics', 'matchers', 'impostor-tails.ts'),
    `// generated by scripts/eval-identify-lfw.ts (npm run eval:identify -- --write-tail): do not edit\nimport type { ImpostorTail } from '../identification.ts';\nimport type { ModelId } from './types.ts';\n\n` +
      `/** Per model: ln FAR = a − b·t, fitted on LFW impostor comparisons between FAR 0.001 and 0.00001. */\nexport const IMPOSTOR_TAILS: Record<ModelId, ImpostorTail> = {\n${lines.join('\n')}\n};\n`,
  );
}
console.log(JSON.stringify({ models: Object.fromEntries(Object.entries(report.models).map(([m, r]) => [m, { all_pairs: r.all_pairs, galleries: r.galleries, templates_from_photos: r.templates_from_photos }])), score_fusion: fusion, frame_fusion: frameFusion }, null, 2));

function corrected(list: { name: string; files: string[] }[]): { name: string; files: string[] }[] {
  const alias = new Map(SAME_PERSON.flatMap(([keep, ...others]) => others.map((o) => [o, keep])));
  const merged = new Map<string, string[]>();
  for (const p of list) {
    const name = alias.get(p.name) ?? p.name;
    const files = p.files.filter((f) => !DUPLICATE_PHOTOS.some((d) => f.endsWith(d)));
    merged.set(name, [...(merged.get(name) ?? []), ...files]);
  }
  return [...merged].filter(([, f]) => f.length > 0).map(([name, f]) => ({ name, files: f }));
}

function roundTail(tail: ImpostorTail): ImpostorTail {
  return { ...tail, a: round(tail.a, 3), b: round(tail.b, 3), from: round(tail.from, 5) };
}

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

/** Embeds every image once with every model; `--cache` keeps the vectors (keyed by path and size) between runs. */
async function embedWithCache(list: string[]): Promise<Map<string, Embeddings | null>> {
  const key = (f: string) => `${path.relative(args.images, f)}:${fs.statSync(f).size}`;
  const cached: Record<string, Record<string, string> | null> = args.cache && fs.existsSync(args.cache) ? JSON.parse(fs.readFileSync(args.cache, 'utf8')) : {};
  // the models some image lacks (a new model, or one whose alignment changed: drop it from the cache)
  const lacking = MODELS.filter((m) => list.some((f) => cached[key(f)] !== null && !(cached[key(f)] && m in (cached[key(f)] as object))));
  const missing = list.filter((f) => cached[key(f)] !== null && lacking.some((m) => !(cached[key(f)] && m in (cached[key(f)] as object))));
  if (missing.length) {
    log(`embedding ${missing.length} images with ${lacking.join(', ')} (about ${Math.round((missing.length * 0.12 * lacking.length) / 60)} min on two workers)`);
    const { embeddings } = await embedAll(analyzer, missing, 2, lacking, (done, total) => {
      if (done % 500 === 0 || done === total) log(`  ${done}/${total}`);
    });
    for (const [f, e] of embeddings) {
      cached[key(f)] = e && { ...cached[key(f)], ...Object.fromEntries(Object.entries(e).map(([m, v]) => [m, Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64')])) };
    }
    if (args.cache) fs.writeFileSync(args.cache, JSON.stringify(cached));
  }
  const decode = (v: string) => {
    const b = Buffer.from(v, 'base64');
    return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  };
  return new Map(
    list.map((f) => {
      const entry = cached[key(f)];
      return [f, entry ? (Object.fromEntries(Object.entries(entry).map(([m, v]) => [m, decode(v)])) as Embeddings) : null];
    }),
  );
}
