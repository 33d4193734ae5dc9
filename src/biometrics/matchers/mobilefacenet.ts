import { createRequire } from 'node:module';
import type * as Ort from 'onnxruntime-node';
import { type Point, extractChip, fitSimilarity, mirrorChip } from '../alignment.ts';
import { normalize } from '../embedding.ts';
import type { ModelFiles } from '../models.ts';
import type { AlignedFace, Describer } from './describer.ts';

const require = createRequire(import.meta.url);

/** The MobileFaceNet of `faceplugin-face-recognition-js` (models/faceplugin/fr_feature.onnx): 112×112 RGB in, 512 values out. */
export const MOBILEFACENET_FILE = 'faceplugin/fr_feature.onnx';
const SIDE = 112;

/**
 * Where the eye centres, the nose tip and the mouth corners of a face land on a 112×112 chip: the
 * five-point template ArcFace-style models are trained with (insightface's `arcface_dst`).
 */
const ARCFACE_TEMPLATE: readonly Point[] = [
  [38.2946, 51.6963],
  [73.5318, 51.5014],
  [56.0252, 71.7366],
  [41.5493, 92.3655],
  [70.7299, 92.2041],
];

/** The five points, in the template's order, from dlib's 68-point layout (indices into it). */
export function fivePoints(landmarks68: readonly Point[]): Point[] {
  const mean = (from: number, to: number): Point => {
    let x = 0;
    let y = 0;
    for (let i = from; i <= to; i++) {
      x += landmarks68[i][0];
      y += landmarks68[i][1];
    }
    return [x / (to - from + 1), y / (to - from + 1)];
  };
  // image-left eye (the person's right) first, as in the template
  return [mean(36, 41), mean(42, 47), landmarks68[30], landmarks68[48], landmarks68[54]];
}

/**
 * The chip's pixels as the network wants them: planar **BGR**, (v − 127) / 128. The package's own
 * JavaScript feeds RGB, but the network was trained on OpenCV's channel order: in BGR it scores
 * LFW k-fold 0.9947 against 0.9907 in RGB, EER 0.0073 against 0.0120 (README, "MobileFaceNet").
 */
function toInput(chip: Float32Array, into: Float32Array): void {
  const plane = SIDE * SIDE;
  for (let i = 0; i < plane; i++) {
    into[i] = (chip[i * 3 + 2] - 127) / 128;
    into[plane + i] = (chip[i * 3 + 1] - 127) / 128;
    into[2 * plane + i] = (chip[i * 3] - 127) / 128;
  }
}

/**
 * ONNX Runtime's graph optimisation levels tried at load. `all` adds the NCHWc layout rewrites:
 * on AVX-512 EPYC cores a pass took 12 ms with them and 16 ms without, on the Xeon cores of an
 * earlier machine 56 ms with them and 18 ms without (outputs equal to 3e-7 on both). Which is
 * faster depends on the CPU, so each is timed on this one.
 */
const OPTIMISATION_LEVELS = ['extended', 'all'] as const;
/** Passes of each level timed at load (interleaved, so a busy moment hits both alike). */
const TIMED_PASSES = 6;
/** Largest difference in any output value for a faster level to be taken: a level is a speed-up, never a different model. */
const SAME_OUTPUT = 1e-4;

type Level = (typeof OPTIMISATION_LEVELS)[number];

/** One model, run at the optimisation level that is fastest on this CPU among those whose outputs agree. */
export interface TunedSession {
  level: Level;
  /** Median time of a pass at each level when it was chosen, ms. */
  timings: Record<Level, number>;
  run(input: Float32Array): Promise<Float32Array>;
}

export async function tunedSession(file: Uint8Array): Promise<TunedSession> {
  const ort = require('onnxruntime-node') as typeof Ort;
  const sessions = new Map<Level, Ort.InferenceSession>();
  for (const level of OPTIMISATION_LEVELS) {
    sessions.set(
      level,
      await ort.InferenceSession.create(file, {
        // one thread per engine worker: the pool already gives each core a worker
        intraOpNumThreads: 1,
        interOpNumThreads: 1,
        graphOptimizationLevel: level,
        executionMode: 'sequential',
      }),
    );
  }
  const runOn = async (session: Ort.InferenceSession, input: Float32Array) => {
    const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', input, [1, 3, SIDE, SIDE]) });
    return out[session.outputNames[0]].data as Float32Array;
  };
  // any fixed input does: the cost does not depend on the values, and a rewrite that changed the
  // function would show on any of them
  const probe = Float32Array.from({ length: 3 * SIDE * SIDE }, (_v, i) => Math.sin(i / 97) * 0.8);
  // each level's first pass (it allocates) checks it against the first level's, `extended`
  const outputs = new Map<Level, Float32Array>();
  for (const [level, session] of sessions) outputs.set(level, await runOn(session, probe));
  const reference = outputs.get(OPTIMISATION_LEVELS[0])!;
  const agrees = (l: Level) => outputs.get(l)!.every((v, i) => Math.abs(v - reference[i]) <= SAME_OUTPUT);
  const times = new Map<Level, number[]>(OPTIMISATION_LEVELS.map((l) => [l, []]));
  for (let k = 0; k < TIMED_PASSES; k++) {
    for (const [level, session] of sessions) {
      const t = performance.now();
      await runOn(session, probe);
      times.get(level)!.push(performance.now() - t);
    }
  }
  const timings = Object.fromEntries([...times].map(([l, t]) => [l, median(t)])) as Record<Level, number>;
  const level = OPTIMISATION_LEVELS.filter(agrees).reduce((a, b) => (timings[b] < timings[a] ? b : a));
  for (const [l, session] of sessions) if (l !== level) await session.release();
  const chosen = sessions.get(level)!;
  return { level, timings, run: (input) => runOn(chosen, input) };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/**
 * The 512-D MobileFaceNet descriptor: the five points of the landmarks framed on the face mesh
 * (engine.ts: on the detector's box a badly framed face costs this model far more than dlib's), a
 * least-squares similarity takes them onto the ArcFace template, a 112 px chip is sampled through it with antialiasing (alignment.ts), and the
 * outputs of the chip and of its mirror image are summed and normalised (the graph has no
 * normalisation of its own). Runs on onnxruntime-node's CPU library (tunedSession).
 */
export async function mobileFaceNetDescriber(models: ModelFiles): Promise<Describer> {
  const session = await tunedSession(models.read(MOBILEFACENET_FILE));
  const input = new Float32Array(3 * SIDE * SIDE);
  const run = (chip: Float32Array): Promise<Float32Array> => {
    toInput(chip, input);
    return session.run(input);
  };
  return {
    async describe(face: AlignedFace): Promise<Float32Array> {
      const chip = extractChip(face.image, fitSimilarity(ARCFACE_TEMPLATE, fivePoints(await face.landmarks('mesh'))), SIDE);
      const plain = await run(chip);
      const sum = Float32Array.from(plain);
      const mirrored = await run(mirrorChip(chip, SIDE));
      for (let i = 0; i < sum.length; i++) sum[i] += mirrored[i];
      return normalize(sum);
    },
  };
}
