import { ImageInputError, sniffImageFormat } from './image.ts';

/** Dimensions read from an image's header, without decoding a single pixel. */
export interface ImageSize {
  format: 'jpeg' | 'png' | 'webp';
  width: number;
  height: number;
}

export interface DimensionLimits {
  maxPixels: number;
  /** Longest side accepted (a camera frame is a few thousand pixels at most). */
  maxSide: number;
  /** Longest side over shortest: a 1×2,500,000 strip is no photo of a face. */
  maxAspectRatio: number;
}

/**
 * Refuses an image by its header alone, on the calling thread, before it is queued for a worker:
 * a 5 KB PNG that declares 1×25,000,000 pixels would otherwise cost its decoder tens of seconds.
 */
export function checkImageHeader(bytes: Uint8Array, limits: DimensionLimits): ImageSize {
  const size = readImageSize(bytes);
  const { width, height } = size;
  if (width < 1 || height < 1) throw new ImageInputError('invalid_image', 'the image header declares no pixels');
  if (Math.max(width, height) > limits.maxSide) {
    throw new ImageInputError('image_too_large', `the image is ${width}×${height}: each side may be at most ${limits.maxSide} pixels`);
  }
  if (width * height > limits.maxPixels) throw new ImageInputError('image_too_large', `the image has more than ${limits.maxPixels} pixels`);
  if (Math.max(width, height) / Math.min(width, height) > limits.maxAspectRatio) {
    throw new ImageInputError('invalid_image', `the image is ${width}×${height}: its sides may differ by a factor of ${limits.maxAspectRatio} at most`);
  }
  return size;
}

export function readImageSize(bytes: Uint8Array): ImageSize {
  const format = sniffImageFormat(bytes);
  if (!format) throw new ImageInputError('unsupported_media_type', 'only JPEG, PNG and WebP images are accepted');
  const size = format === 'png' ? pngSize(bytes) : format === 'jpeg' ? jpegSize(bytes) : webpSize(bytes);
  if (!size) throw new ImageInputError('invalid_image', 'the image header could not be read');
  return { format, ...size };
}

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** PNG: the first chunk is IHDR, width and height big-endian at bytes 16 and 20. */
function pngSize(b: Uint8Array): { width: number; height: number } | null {
  if (b.length < 24 || String.fromCharCode(b[12], b[13], b[14], b[15]) !== 'IHDR') return null;
  return { width: view(b).getUint32(16), height: view(b).getUint32(20) };
}

/** JPEG: walk the marker segments to the first start-of-frame (baseline, progressive, lossless…). */
function jpegSize(b: Uint8Array): { width: number; height: number } | null {
  const v = view(b);
  let i = 2;
  while (i + 4 <= b.length) {
    if (b[i] !== 0xff) return null;
    const marker = b[i + 1];
    if (marker === 0xff) {
      i++; // fill byte
      continue;
    }
    if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      i += 2; // no length
      continue;
    }
    const length = v.getUint16(i + 2);
    const isFrame = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (isFrame) {
      if (i + 9 > b.length) return null;
      return { height: v.getUint16(i + 5), width: v.getUint16(i + 7) };
    }
    if (marker === 0xda || marker === 0xd9) return null; // scan or end before any frame header
    i += 2 + length;
  }
  return null;
}

/** WebP: VP8 (lossy), VP8L (lossless) or VP8X (extended) first chunk. */
function webpSize(b: Uint8Array): { width: number; height: number } | null {
  if (b.length < 30) return null;
  const chunk = String.fromCharCode(b[12], b[13], b[14], b[15]);
  const v = view(b);
  if (chunk === 'VP8 ') return { width: v.getUint16(26, true) & 0x3fff, height: v.getUint16(28, true) & 0x3fff };
  if (chunk === 'VP8L') {
    const bits = v.getUint32(21, true);
    return { width: (bits & 0x3fff) + 1, height: ((bits >> 14) & 0x3fff) + 1 };
  }
  if (chunk === 'VP8X') {
    const u24 = (at: number) => b[at] | (b[at + 1] << 8) | (b[at + 2] << 16);
    return { width: u24(24) + 1, height: u24(27) + 1 };
  }
  return null;
}
