import sharp, { type Sharp } from 'sharp';
import type { RgbImage } from './alignment.ts';

export type ImageFormat = 'jpeg' | 'png' | 'webp';

/** An image the engine refuses; `kind` maps to 415 / 413 / 400 at the HTTP edge. */
export class ImageInputError extends Error {
  constructor(
    readonly kind: 'unsupported_media_type' | 'image_too_large' | 'invalid_image',
    message: string,
  ) {
    super(message);
  }
}

/** Recognises JPEG, PNG and WebP by their magic bytes, whatever the declared content type. */
export function sniffImageFormat(bytes: Uint8Array): ImageFormat | null {
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return 'jpeg';
  if (
    bytes.length >= 8 &&
    bytes[0] === 0x89 &&
    bytes[1] === 0x50 &&
    bytes[2] === 0x4e &&
    bytes[3] === 0x47 &&
    bytes[4] === 0x0d &&
    bytes[5] === 0x0a &&
    bytes[6] === 0x1a &&
    bytes[7] === 0x0a
  ) {
    return 'png';
  }
  if (
    bytes.length >= 12 &&
    String.fromCharCode(bytes[0], bytes[1], bytes[2], bytes[3]) === 'RIFF' &&
    String.fromCharCode(bytes[8], bytes[9], bytes[10], bytes[11]) === 'WEBP'
  ) {
    return 'webp';
  }
  return null;
}

/** Longest side the engine works at; larger photos are shrunk first (faces stay far above the chip size). */
export const MAX_WORKING_SIDE = 1280;

/**
 * Decodes to packed RGB in memory, honouring EXIF orientation. Nothing is written anywhere;
 * the caller drops the pixels after analysis.
 */
export async function decodeImage(bytes: Uint8Array, maxPixels: number): Promise<RgbImage> {
  const format = sniffImageFormat(bytes);
  if (!format) throw new ImageInputError('unsupported_media_type', 'only JPEG, PNG and WebP images are accepted');
  let pipeline: Sharp;
  try {
    pipeline = sharp(bytes, { limitInputPixels: maxPixels, failOn: 'error', animated: false });
    const meta = await pipeline.metadata();
    if (meta.format !== format && !(format === 'jpeg' && meta.format === 'jpeg')) {
      throw new ImageInputError('unsupported_media_type', 'the image content does not match its format');
    }
    if ((meta.width ?? 0) * (meta.height ?? 0) > maxPixels) {
      throw new ImageInputError('image_too_large', `the image has more than ${maxPixels} pixels`);
    }
    const { data, info } = await pipeline
      .rotate()
      .resize({ width: MAX_WORKING_SIDE, height: MAX_WORKING_SIDE, fit: 'inside', withoutEnlargement: true })
      .removeAlpha()
      .toColourspace('srgb')
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new ImageInputError('invalid_image', 'the image could not be decoded as colour');
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height };
  } catch (err) {
    if (err instanceof ImageInputError) throw err;
    const message = err instanceof Error ? err.message : '';
    if (/pixel limit/i.test(message)) throw new ImageInputError('image_too_large', `the image has more than ${maxPixels} pixels`);
    // sharp's messages can echo input details; answer with a fixed text
    throw new ImageInputError('invalid_image', 'the image could not be decoded');
  }
}
