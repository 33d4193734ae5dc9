import type { RgbImage } from './alignment.ts';
import { tunedSession } from './onnx-session.ts';
import type { ModelFiles } from './models.ts';
import type { Box } from './types.ts';

/**
 * The face anti-spoofing network of `faceplugin-face-recognition-js` (models/faceplugin/fr_liveness.onnx;
 * two MiniFASNet-SE branches, the Silent-Face-Anti-Spoofing design): 128×128 RGB in, three classes
 * out, of which the first is a live face (README, "Passive anti-spoofing").
 */
export const PAD_FILE = 'faceplugin/fr_liveness.onnx';
const SIDE = 128;
/**
 * The crop it was trained on (Silent-Face-Anti-Spoofing's CropImage): the face box scaled 2.7×
 * about its centre, or less where the image is too small for that (the box's proportions kept),
 * shifted to stay inside the image, then resized to 128×128 whatever its proportions.
 */
const CROP_SCALE = 2.7;

export interface PresentationAttackModel {
  /** The probability (0..1) that the face in `box` is a live one presented to the camera. */
  liveScore(image: RgbImage, box: Box): Promise<number>;
}

export async function loadPresentationAttackModel(models: ModelFiles): Promise<PresentationAttackModel> {
  const session = await tunedSession(models.read(PAD_FILE), SIDE);
  const input = new Float32Array(3 * SIDE * SIDE);
  return {
    async liveScore(image, box) {
      const chip = sampleCrop(image, trainedCrop(image, box), SIDE);
      // planar RGB, raw 0..255, as the package feeds it
      const plane = SIDE * SIDE;
      for (let i = 0; i < plane; i++) {
        input[i] = chip[i * 3];
        input[plane + i] = chip[i * 3 + 1];
        input[2 * plane + i] = chip[i * 3 + 2];
      }
      const logits = await session.run(input);
      const top = Math.max(...logits);
      let sum = 0;
      for (const v of logits) sum += Math.exp(v - top);
      return Math.exp(logits[0] - top) / sum;
    },
  };
}

/** The trained crop of `box` in `image` (Silent-Face-Anti-Spoofing's CropImage). */
function trainedCrop(image: RgbImage, box: Box): Box {
  const scale = Math.min(CROP_SCALE, (image.height - 1) / box.height, (image.width - 1) / box.width);
  const width = box.width * scale;
  const height = box.height * scale;
  const x = Math.min(Math.max(box.x + box.width / 2 - width / 2, 0), image.width - 1 - width);
  const y = Math.min(Math.max(box.y + box.height / 2 - height / 2, 0), image.height - 1 - height);
  return { x, y, width, height };
}

/**
 * `crop` resized to side × side (interleaved RGB, 0..255): each output pixel the mean of a grid of
 * bilinear samples as fine as the scale-down, so a large crop is antialiased as alignment.ts's chips are.
 */
function sampleCrop(image: RgbImage, crop: Box, side: number): Float32Array {
  const { data, width, height } = image;
  const sx = crop.width / side;
  const sy = crop.height / side;
  const gx = Math.max(1, Math.ceil(sx));
  const gy = Math.max(1, Math.ceil(sy));
  const out = new Float32Array(side * side * 3);
  const at = (x: number, y: number, c: number) => data[(y * width + x) * 3 + c];
  for (let oy = 0; oy < side; oy++) {
    for (let ox = 0; ox < side; ox++) {
      let r = 0;
      let g = 0;
      let b = 0;
      for (let j = 0; j < gy; j++) {
        const iy = Math.min(Math.max(crop.y + (oy + (j + 0.5) / gy) * sy - 0.5, 0), height - 1.001);
        const y0 = iy | 0;
        const fy = iy - y0;
        for (let i = 0; i < gx; i++) {
          const ix = Math.min(Math.max(crop.x + (ox + (i + 0.5) / gx) * sx - 0.5, 0), width - 1.001);
          const x0 = ix | 0;
          const fx = ix - x0;
          const w00 = (1 - fx) * (1 - fy);
          const w10 = fx * (1 - fy);
          const w01 = (1 - fx) * fy;
          const w11 = fx * fy;
          r += w00 * at(x0, y0, 0) + w10 * at(x0 + 1, y0, 0) + w01 * at(x0, y0 + 1, 0) + w11 * at(x0 + 1, y0 + 1, 0);
          g += w00 * at(x0, y0, 1) + w10 * at(x0 + 1, y0, 1) + w01 * at(x0, y0 + 1, 1) + w11 * at(x0 + 1, y0 + 1, 1);
          b += w00 * at(x0, y0, 2) + w10 * at(x0 + 1, y0, 2) + w01 * at(x0, y0 + 1, 2) + w11 * at(x0 + 1, y0 + 1, 2);
        }
      }
      const k = (oy * side + ox) * 3;
      const n = gx * gy;
      out[k] = r / n;
      out[k + 1] = g / n;
      out[k + 2] = b / n;
    }
  }
  return out;
}
