/**
 * Face alignment the way the dlib ResNet descriptor was trained: a least-squares similarity
 * transform maps 68-point landmarks onto dlib's mean face shape, and a 150×150 chip with 25 %
 * padding is sampled through it (dlib's `get_face_chip_details(shape, 150, 0.25)`).
 * The descriptor is very sensitive to this framing; a plain crop of the detector box loses most
 * of its accuracy (see the README's accuracy section).
 */

export type Point = readonly [number, number];

export interface RgbImage {
  /** Packed RGB, 3 bytes per pixel, row-major. */
  data: Uint8Array;
  width: number;
  height: number;
}

export const CHIP_SIZE = 150;
const CHIP_PADDING = 0.25;

// dlib's mean face shape for landmarks 17..67, in a unit square (dlib/image_transforms/interpolation.h)
const MEAN_FACE_X = [
  0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124, 0.904991, 0.98004, 0.490127,
  0.490127, 0.490127, 0.490127, 0.36688, 0.426036, 0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825,
  0.334606, 0.260918, 0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149, 0.340985,
  0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721, 0.490127, 0.423532, 0.338094, 0.290379,
  0.428096, 0.490127, 0.552157, 0.689874, 0.553364, 0.490127, 0.42689,
];
const MEAN_FACE_Y = [
  0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891, 0.0187482, 0.038915, 0.106454,
  0.203352, 0.307009, 0.409805, 0.515625, 0.587326, 0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758,
  0.179852, 0.231733, 0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099, 0.780233,
  0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805, 0.902192, 0.909281, 0.902192, 0.864805,
  0.784792, 0.778746, 0.785343, 0.778746, 0.784792, 0.824182, 0.831803, 0.824182,
];

/** dlib fits on the nose, eyes and upper lips only: eyebrows and the lower lip move too much. */
const FIT_POINTS: readonly number[] = Array.from({ length: 68 }, (_, i) => i).filter(
  (i) => i >= 27 && !(i >= 55 && i <= 59) && i <= 64,
);

/** Where each fitted landmark lands on the chip, in chip pixels. */
const CHIP_TARGETS: readonly Point[] = FIT_POINTS.map((i) => [
  ((CHIP_PADDING + MEAN_FACE_X[i - 17]) / (2 * CHIP_PADDING + 1)) * CHIP_SIZE,
  ((CHIP_PADDING + MEAN_FACE_Y[i - 17]) / (2 * CHIP_PADDING + 1)) * CHIP_SIZE,
]);

/** x' = a·x − b·y + tx, y' = b·x + a·y + ty */
export interface Similarity {
  a: number;
  b: number;
  tx: number;
  ty: number;
}

/** Least-squares similarity transform (rotation, uniform scale, translation) taking `from` onto `to`. */
export function fitSimilarity(from: readonly Point[], to: readonly Point[]): Similarity {
  const n = from.length;
  let fx = 0;
  let fy = 0;
  let tx = 0;
  let ty = 0;
  for (let i = 0; i < n; i++) {
    fx += from[i][0];
    fy += from[i][1];
    tx += to[i][0];
    ty += to[i][1];
  }
  fx /= n;
  fy /= n;
  tx /= n;
  ty /= n;
  let dotSum = 0;
  let crossSum = 0;
  let norm = 0;
  for (let i = 0; i < n; i++) {
    const x = from[i][0] - fx;
    const y = from[i][1] - fy;
    const u = to[i][0] - tx;
    const v = to[i][1] - ty;
    dotSum += x * u + y * v;
    crossSum += x * v - y * u;
    norm += x * x + y * y;
  }
  const a = dotSum / norm;
  const b = crossSum / norm;
  return { a, b, tx: tx - (a * fx - b * fy), ty: ty - (b * fx + a * fy) };
}

/** The transform from chip pixels to image pixels for these 68 landmarks. */
export function chipTransform(landmarks68: readonly Point[]): Similarity {
  if (landmarks68.length !== 68) throw new Error('alignment needs 68 landmarks');
  return fitSimilarity(
    CHIP_TARGETS,
    FIT_POINTS.map((i) => landmarks68[i]),
  );
}

/**
 * Samples an aligned `size`×`size` RGB chip (float 0..255; dlib's 150 px by default). When the face is larger than the chip,
 * each chip pixel averages a grid of bilinear samples so the chip is not aliased. Pixels that
 * fall outside the image repeat its edge, which keeps tight crops usable.
 */
export function extractChip(image: RgbImage, t: Similarity, size = CHIP_SIZE): Float32Array {
  const { data, width, height } = image;
  const scale = Math.hypot(t.a, t.b);
  const grid = Math.max(1, Math.ceil(scale));
  const weight = 1 / (grid * grid);
  const out = new Float32Array(size * size * 3);
  const maxX = width - 1.001;
  const maxY = height - 1.001;
  // a and b times each sample's chip coordinate (rows and columns sample alike), computed once
  // rather than per sample: the same products, so the chip is bit-identical
  const aTimes = new Float64Array(size * grid);
  const bTimes = new Float64Array(size * grid);
  for (let i = 0; i < size; i++) {
    for (let s = 0; s < grid; s++) {
      const c = i + (s + 0.5) / grid - 0.5;
      aTimes[i * grid + s] = t.a * c;
      bTimes[i * grid + s] = t.b * c;
    }
  }
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      let r = 0;
      let g = 0;
      let b = 0;
      for (let sy = 0; sy < grid; sy++) {
        const bcy = bTimes[y * grid + sy];
        const acy = aTimes[y * grid + sy];
        for (let sx = 0; sx < grid; sx++) {
          const ix = Math.min(Math.max(aTimes[x * grid + sx] - bcy + t.tx, 0), maxX);
          const iy = Math.min(Math.max(bTimes[x * grid + sx] + acy + t.ty, 0), maxY);
          const x0 = ix | 0;
          const y0 = iy | 0;
          const fx = ix - x0;
          const fy = iy - y0;
          const p00 = (y0 * width + x0) * 3;
          const p10 = p00 + width * 3;
          const w00 = (1 - fx) * (1 - fy);
          const w01 = fx * (1 - fy);
          const w10 = (1 - fx) * fy;
          const w11 = fx * fy;
          r += data[p00] * w00 + data[p00 + 3] * w01 + data[p10] * w10 + data[p10 + 3] * w11;
          g += data[p00 + 1] * w00 + data[p00 + 4] * w01 + data[p10 + 1] * w10 + data[p10 + 4] * w11;
          b += data[p00 + 2] * w00 + data[p00 + 5] * w01 + data[p10 + 2] * w10 + data[p10 + 5] * w11;
        }
      }
      const o = (y * size + x) * 3;
      out[o] = r * weight;
      out[o + 1] = g * weight;
      out[o + 2] = b * weight;
    }
  }
  return out;
}

/** The chip mirrored left to right (test-time augmentation: the descriptor of both is averaged). */
export function mirrorChip(chip: Float32Array, size = CHIP_SIZE): Float32Array {
  const out = new Float32Array(chip.length);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const s = (y * size + x) * 3;
      const d = (y * size + (size - 1 - x)) * 3;
      out[d] = chip[s];
      out[d + 1] = chip[s + 1];
      out[d + 2] = chip[s + 2];
    }
  }
  return out;
}

/** Index of the mirrored counterpart of each of the 68 landmarks. */
export const MIRROR_68: readonly number[] = [
  16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 27, 28, 29, 30, 35,
  34, 33, 32, 31, 45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40, 54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64,
  63, 62, 61, 60, 67, 66, 65,
];

/** The MediaPipe face-mesh vertex that corresponds to each of dlib's 68 landmarks. */
export const MESH_TO_68: readonly number[] = [
  162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389, 71, 63, 105, 66, 107, 336, 296,
  334, 293, 301, 168, 197, 5, 4, 75, 97, 2, 326, 305, 33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380, 61,
  39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
];

export function averagePoints(a: readonly Point[], b: readonly Point[]): Point[] {
  return a.map((p, i) => [(p[0] + b[i][0]) / 2, (p[1] + b[i][1]) / 2] as const);
}
