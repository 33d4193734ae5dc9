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

/** The chip's pixels as the network wants them: planar RGB, (v − 127) / 128. */
function toInput(chip: Float32Array, into: Float32Array): void {
  const plane = SIDE * SIDE;
  for (let i = 0; i < plane; i++) {
    into[i] = (chip[i * 3] - 127) / 128;
    into[plane + i] = (chip[i * 3 + 1] - 127) / 128;
    into[2 * plane + i] = (chip[i * 3 + 2] - 127) / 128;
  }
}

/**
 * The 512-D MobileFaceNet descriptor: the five points of the landmarks framed on the face mesh
 * (engine.ts: on the detector's box a badly framed face costs this model far more than dlib's), a
 * least-squares similarity takes them onto the ArcFace template, a 112 px chip is sampled through it with antialiasing (alignment.ts), and the
 * outputs of the chip and of its mirror image are summed and normalised (the graph has no
 * normalisation of its own). Runs on onnxruntime-node's CPU library, one thread per engine
 * worker: the pool already gives each core a worker.
 */
export async function mobileFaceNetDescriber(models: ModelFiles): Promise<Describer> {
  const ort = require('onnxruntime-node') as typeof Ort;
  const session = await ort.InferenceSession.create(models.read(MOBILEFACENET_FILE), {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    // 'all' adds the NCHWc layout rewrites, which make a pass three times slower on this CPU (56
    // against 18 ms on 2 Xeon cores, outputs equal to 3e-7); 'extended' keeps the node fusions
    graphOptimizationLevel: 'extended',
    executionMode: 'sequential',
  });
  const [inputName] = session.inputNames;
  const [outputName] = session.outputNames;
  const input = new Float32Array(3 * SIDE * SIDE);
  const run = async (chip: Float32Array): Promise<Float32Array> => {
    toInput(chip, input);
    const out = await session.run({ [inputName]: new ort.Tensor('float32', input, [1, 3, SIDE, SIDE]) });
    return out[outputName].data as Float32Array;
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
