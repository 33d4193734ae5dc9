import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import sharp from 'sharp';
import { hasShared, shared } from './datasets.ts';
import { sharedAnalyzer } from './service.ts';

export interface Photos {
  /** Where the photos came from. */
  source: 'shared datasets' | 'npm package demo photos';
  /** Different photos of one person (at least three). */
  personA: Buffer[];
  /** One photo each of two other people. */
  personB: Buffer;
  personC: Buffer;
  /** Several people in one frame. */
  group: Buffer;
  /** A photo with no face in it. */
  noFace: Buffer;
}

let cached: Promise<Photos> | undefined;

/**
 * Real face photos for the functional flows: from ../shared/datasets when present (deepface:
 * img1/img2/img4 are one person, img13 and img16 two others), otherwise cut from the group photos
 * that @vladmandic/face-api ships, so a fresh clone without ../shared still runs every flow.
 */
export function photos(): Promise<Photos> {
  cached ??= hasShared ? fromShared() : fromPackages();
  return cached;
}

async function fromShared(): Promise<Photos> {
  const read = (f: string) => fs.readFileSync(shared('deepface', f));
  return {
    source: 'shared datasets',
    personA: ['img1.jpg', 'img2.jpg', 'img4.jpg'].map(read),
    personB: read('img13.jpg'),
    personC: read('img16.jpg'),
    group: fs.readFileSync(shared('bbt', 'group', 'bbt1.jpg')),
    noFace: await noFaceImage(),
  };
}

async function fromPackages(): Promise<Photos> {
  const require = createRequire(import.meta.url);
  const demo = path.join(path.dirname(require.resolve('@vladmandic/face-api/package.json')), 'demo');
  const groupPhoto = fs.readFileSync(path.join(demo, 'sample1.jpg'));
  const analyzer = await sharedAnalyzer();
  const { boxes, width } = await analyzer.analyze(new Uint8Array(groupPhoto), { mode: 'photo' });
  // the engine works on a copy shrunk to 1280 px; scale its boxes back to the original
  const meta = await sharp(groupPhoto).metadata();
  const [W, H] = [meta.width as number, meta.height as number];
  const k = W / width;
  const crop = (b: (typeof boxes)[number], margin: number, shift = 0) => {
    const side = Math.max(b.width, b.height) * k * (1 + 2 * margin);
    const left = Math.min(Math.max(0, Math.round((b.x + b.width / 2 + shift * b.width) * k - side / 2)), W - 1);
    const top = Math.min(Math.max(0, Math.round((b.y + b.height / 2) * k - side / 2)), H - 1);
    return sharp(groupPhoto).extract({ left, top, width: Math.min(Math.round(side), W - left), height: Math.min(Math.round(side), H - top) });
  };
  // keep the boxes whose crop holds one usable face (the detector also boxes a few non-faces)
  const people: (typeof boxes)[number][] = [];
  for (const b of [...boxes].sort((p, q) => p.x - q.x)) {
    const check = await analyzer.analyze(new Uint8Array(await crop(b, 0.3).jpeg().toBuffer()), { mode: 'capture' });
    if (check.problems.length === 0) people.push(b);
  }
  if (people.length < 3) throw new Error(`expected three usable faces in face-api demo sample1.jpg, found ${people.length}`);
  const [a, b, c] = people;
  return {
    source: 'npm package demo photos',
    personA: [
      await crop(a, 0.3).jpeg().toBuffer(),
      await crop(a, 0.25, 0.04).flop().modulate({ brightness: 1.15 }).jpeg().toBuffer(),
      await crop(a, 0.35, -0.04).modulate({ brightness: 0.9, saturation: 0.8 }).png().toBuffer(),
    ],
    personB: await crop(b, 0.3).jpeg().toBuffer(),
    personC: await crop(c, 0.3).jpeg().toBuffer(),
    group: groupPhoto,
    noFace: await noFaceImage(),
  };
}

/** A textured landscape-like picture with no face: a gradient sky over noisy ground. */
async function noFaceImage(): Promise<Buffer> {
  const width = 480;
  const height = 360;
  const data = Buffer.alloc(width * height * 3);
  let seed = 7;
  const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 3;
      if (y < height / 2) {
        data[o] = 90 + y / 3;
        data[o + 1] = 140 + y / 4;
        data[o + 2] = 220;
      } else {
        const n = rand() * 60;
        data[o] = 60 + n;
        data[o + 1] = 110 + n;
        data[o + 2] = 40 + n / 2;
      }
    }
  }
  return sharp(data, { raw: { width, height, channels: 3 } }).jpeg().toBuffer();
}

/** A photo three times: a decision needs three usable frames (frames.required). */
export function thrice(photo: Buffer): Buffer[] {
  return [photo, photo, photo];
}
