import { type Point, extractChip, fitSimilarity, mirrorChip } from '../alignment.ts';
import { normalize } from '../embedding.ts';
import type { ModelFiles } from '../models.ts';
import { tunedSession } from '../onnx-session.ts';
import type { AlignedFace, Describer } from './describer.ts';


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
 * The 512-D MobileFaceNet descriptor: the five points of the landmarks framed on the face mesh
 * (engine.ts: on the detector's box a badly framed face costs this model far more than dlib's), a
 * least-squares similarity takes them onto the ArcFace template, a 112 px chip is sampled through it with antialiasing (alignment.ts), and the
 * outputs of the chip and of its mirror image are summed and normalised (the graph has no
 * normalisation of its own). Runs on onnxruntime-node's CPU library (tunedSession).
 */
export async function mobileFaceNetDescriber(models: ModelFiles): Promise<Describer> {
  const session = await tunedSession(models.read(MOBILEFACENET_FILE), SIDE);
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
