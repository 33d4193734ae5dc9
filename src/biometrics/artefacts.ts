import type { RgbImage } from './alignment.ts';
import type { Box } from './types.ts';

/**
 * Frame-level evidence of a presentation attack, measured on the pixels (worker side):
 * - `border`: how much of a straight edge frames the face on opposite sides, the way a phone's
 *   bezel or the edge of a print does (0 = none, 1 = an unbroken line along the whole face);
 * - `moire`: how peaked the face's high-frequency spectrum is (screen pixel grids and moiré give
 *   sharp isolated peaks; skin gives a smooth spectrum), as log10 of peak over median power.
 */
export interface Artefacts {
  border: number;
  moire: number;
}

export function measureArtefacts(image: RgbImage, face: Box): Artefacts {
  return { border: borderScore(image, face), moire: moireScore(image, face) };
}

const WORK_SIDE = 320;
const ANGLES = [-0.12, -0.06, 0, 0.06, 0.12]; // slopes (px per px) of the lines looked for

/** Grey image shrunk (area average) so its longer side is at most WORK_SIDE. */
function shrinkGrey(image: RgbImage): { g: Float32Array; w: number; h: number; k: number } {
  const k = Math.max(1, Math.ceil(Math.max(image.width, image.height) / WORK_SIDE));
  const w = Math.floor(image.width / k);
  const h = Math.floor(image.height / k);
  const g = new Float32Array(w * h);
  const d = image.data;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let s = 0;
      for (let yy = 0; yy < k; yy++) {
        let o = ((y * k + yy) * image.width + x * k) * 3;
        for (let xx = 0; xx < k; xx++, o += 3) s += 0.299 * d[o] + 0.587 * d[o + 1] + 0.114 * d[o + 2];
      }
      g[y * w + x] = s / (k * k);
    }
  }
  return { g, w, h, k };
}

function borderScore(image: RgbImage, face: Box): number {
  const { g, w, h, k } = shrinkGrey(image);
  const fx = face.x / k;
  const fy = face.y / k;
  const fw = face.width / k;
  const fh = face.height / k;
  // strong edges: the gradient must stand out against this frame's own texture
  const gx = new Float32Array(w * h);
  const gy = new Float32Array(w * h);
  const mags: number[] = [];
  for (let y = 1; y < h - 1; y++) {
    for (let x = 1, i = y * w + 1; x < w - 1; x++, i++) {
      gx[i] = Math.abs(g[i + 1] - g[i - 1]);
      gy[i] = Math.abs(g[i + w] - g[i - w]);
    }
    // the frame's texture, sampled on every 7th diagonal
    for (let x = 1 + ((7 - ((y + 1) % 7)) % 7); x < w - 1; x += 7) mags.push(gx[y * w + x] + gy[y * w + x]);
  }
  const sorted = Float64Array.from(mags).sort();
  const strong = Math.max(12, 4 * (sorted[Math.floor(sorted.length / 2)] ?? 0));
  // where a line across x (vertical lines) or across y (horizontal ones) meets a strong edge,
  // allowing one pixel of wobble across the line: read once here, not once per line and slope
  const edgeAcrossX = new Uint8Array(w * h);
  const edgeAcrossY = new Uint8Array(w * h);
  for (let i = w; i < w * (h - 1); i++) {
    edgeAcrossX[i] = gx[i] >= strong || gx[i - 1] >= strong || gx[i + 1] >= strong ? 1 : 0;
    edgeAcrossY[i] = gy[i] >= strong || gy[i - w] >= strong || gy[i + w] >= strong ? 1 : 0;
  }

  /** Best fraction of `length` positions along a line (any of ANGLES) with a strong edge. */
  const bestLine = (vertical: boolean, from: number, to: number, spanStart: number, spanEnd: number): number => {
    const s0 = Math.max(1, Math.round(spanStart));
    const s1 = Math.min((vertical ? h : w) - 2, Math.round(spanEnd));
    const length = s1 - s0;
    if (length < 10) return 0;
    const lim = vertical ? w - 2 : h - 2;
    const edge = vertical ? edgeAcrossX : edgeAcrossY;
    // position s on the line through c at `slope` is pixel (along, across) = (s, p)
    const [alongStride, acrossStride] = vertical ? [w, 1] : [1, w];
    let best = 0;
    for (let c = Math.max(1, Math.round(from)); c <= Math.min(lim, Math.round(to)); c++) {
      for (const slope of ANGLES) {
        let hits = 0;
        for (let s = s0; s < s1; s++) {
          const p = Math.round(c + slope * (s - s0));
          if (p < 1 || p > lim) continue;
          hits += edge[s * alongStride + p * acrossStride];
        }
        best = Math.max(best, hits / length);
      }
    }
    return best;
  };

  const gapX = 0.15 * fw;
  const gapY = 0.15 * fh;
  const left = bestLine(true, 0, fx - gapX, fy - 0.2 * fh, fy + 1.2 * fh);
  const right = bestLine(true, fx + fw + gapX, w, fy - 0.2 * fh, fy + 1.2 * fh);
  const top = bestLine(false, 0, fy - gapY, fx - 0.2 * fw, fx + 1.2 * fw);
  const bottom = bestLine(false, fy + fh + gapY, h, fx - 0.2 * fw, fx + 1.2 * fw);
  // a frame around the face shows on opposite sides (or on three sides of a tilted device)
  return Math.max(Math.min(left, right), Math.min(top, bottom), Math.min(left, top, bottom), Math.min(right, top, bottom));
}

/** cos and sin of −2πj/len for every stage of an FFT of length n, computed once per length. */
const twiddles = new Map<number, { cos: Float64Array; sin: Float64Array }>();
function twiddlesOf(n: number): { cos: Float64Array; sin: Float64Array } {
  let t = twiddles.get(n);
  if (!t) {
    // stage `len` reads its j-th factor at offset len/2 − 1 + j (the stages' halves add up to n − 1)
    t = { cos: new Float64Array(n), sin: new Float64Array(n) };
    for (let len = 2; len <= n; len <<= 1) {
      const ang = (-2 * Math.PI) / len;
      for (let j = 0; j < len / 2; j++) {
        t.cos[len / 2 - 1 + j] = Math.cos(ang * j);
        t.sin[len / 2 - 1 + j] = Math.sin(ang * j);
      }
    }
    twiddles.set(n, t);
  }
  return t;
}

/** In-place radix-2 FFT of a complex signal (re, im) of power-of-two length. */
function fft(re: Float64Array, im: Float64Array): void {
  const n = re.length;
  const { cos, sin } = twiddlesOf(n);
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const base = len / 2 - 1;
    for (let i = 0; i < n; i += len) {
      for (let j = 0; j < len / 2; j++) {
        const wr = cos[base + j];
        const wi = sin[base + j];
        const ur = re[i + j];
        const ui = im[i + j];
        const vr = re[i + j + len / 2] * wr - im[i + j + len / 2] * wi;
        const vi = re[i + j + len / 2] * wi + im[i + j + len / 2] * wr;
        re[i + j] = ur + vr;
        im[i + j] = ui + vi;
        re[i + j + len / 2] = ur - vr;
        im[i + j + len / 2] = ui - vi;
      }
    }
  }
}

function moireScore(image: RgbImage, face: Box): number {
  // a window of the face at native resolution (screen grids vanish when the image is shrunk)
  const side = Math.min(image.width, image.height, face.width * 0.6, face.height * 0.6);
  let n = 32;
  while (n * 2 <= Math.min(side, 128)) n *= 2;
  if (side < 32) return 0;
  const cx = Math.round(face.x + face.width / 2);
  const cy = Math.round(face.y + face.height * 0.55);
  const x0 = Math.min(Math.max(0, cx - n / 2), image.width - n);
  const y0 = Math.min(Math.max(0, cy - n / 2), image.height - n);
  const re = new Float64Array(n * n);
  const im = new Float64Array(n * n);
  let mean = 0;
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      const o = ((y0 + y) * image.width + x0 + x) * 3;
      const v = 0.299 * image.data[o] + 0.587 * image.data[o + 1] + 0.114 * image.data[o + 2];
      re[y * n + x] = v;
      mean += v;
    }
  }
  mean /= n * n;
  const hann = Float64Array.from({ length: n }, (_, x) => Math.sin((Math.PI * (x + 0.5)) / n) ** 2);
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) re[y * n + x] = (re[y * n + x] - mean) * (hann[x] * hann[y]);
  }
  // 2-D FFT: rows then columns
  const rowRe = new Float64Array(n);
  const rowIm = new Float64Array(n);
  for (let pass = 0; pass < 2; pass++) {
    for (let a = 0; a < n; a++) {
      for (let b = 0; b < n; b++) {
        const i = pass === 0 ? a * n + b : b * n + a;
        rowRe[b] = re[i];
        rowIm[b] = im[i];
      }
      fft(rowRe, rowIm);
      for (let b = 0; b < n; b++) {
        const i = pass === 0 ? a * n + b : b * n + a;
        re[i] = rowRe[b];
        im[i] = rowIm[b];
      }
    }
  }
  // power in the high-frequency band, away from the axes (edges) and the 8-px JPEG block grid
  const band: number[] = [];
  const block = n / 8;
  for (let v = 0; v < n; v++) {
    for (let u = 0; u < n / 2; u++) {
      const fu = u;
      const fv = v <= n / 2 ? v : n - v;
      const r2 = fu * fu + fv * fv; // integers: the band's radii compared exactly
      if (r2 < (n / 8) ** 2 || r2 > (n / 2) ** 2) continue;
      if (fu <= 1 || fv <= 1) continue;
      if (Math.abs(fu - Math.round(fu / block) * block) <= 1 || Math.abs(fv - Math.round(fv / block) * block) <= 1) continue;
      band.push(re[v * n + u] ** 2 + im[v * n + u] ** 2);
    }
  }
  if (band.length < 16) return 0;
  band.sort((a, b) => a - b);
  const median = band[Math.floor(band.length / 2)] || 1e-9;
  return Math.log10(band[band.length - 1] / median);
}
