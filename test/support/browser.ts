import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import sharp from 'sharp';
import { type Browser, chromium } from 'playwright-core';
import { ROOT } from './datasets.ts';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const ARTIFACTS = path.join(ROOT, 'artifacts', 'screens');

export const hasChromium = fs.existsSync(CHROMIUM);

/** Skips a browser suite, saying why, when Debian's chromium is not installed (.ci/run installs it). */
export function requireChromium(suite: Mocha.Suite): void {
  suite.beforeAll(function () {
    if (!hasChromium) {
      console.log(`      skipped: ${CHROMIUM} is not installed (apt-get install chromium)`);
      this.skip();
    }
  });
}

/**
 * Headless Debian Chromium, optionally with a fake webcam that plays `video` (an .mjpeg file; the
 * recipe of ../shared/datasets/README.md). No browser is downloaded.
 */
export async function launch(opts: { video?: string; camera?: 'fake' | 'none'; args?: string[] } = {}): Promise<Browser> {
  const args = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage'];
  if (opts.camera !== 'none') args.push('--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream');
  if (opts.video) args.push(`--use-file-for-fake-video-capture=${opts.video}`);
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...args, ...(opts.args ?? [])] });
}

/**
 * Writes an MJPEG clip (baseline 4:2:0 JPEG frames) of `frames` copies of a photo fitted into
 * 640×480. The margin is filled by mirroring the photo's edges: a flat letterbox would frame the
 * face with straight lines, which the server rightly takes for a screen or a print.
 */
export async function stillClip(photo: Buffer, file: string, frames = 30): Promise<string> {
  const jpeg = await cameraFrame(photo);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, Buffer.concat(Array.from({ length: frames }, () => jpeg)));
  return file;
}

/** A photo as a 640×480 camera frame (baseline 4:2:0 JPEG), margins filled by mirroring its edges. */
export async function cameraFrame(photo: Buffer): Promise<Buffer> {
  const fitted = await sharp(photo).rotate().resize(640, 480, { fit: 'inside' }).toBuffer({ resolveWithObject: true });
  const dx = 640 - fitted.info.width;
  const dy = 480 - fitted.info.height;
  return sharp(fitted.data)
    .extend({ left: Math.floor(dx / 2), right: Math.ceil(dx / 2), top: Math.floor(dy / 2), bottom: Math.ceil(dy / 2), extendWith: 'mirror' })
    .jpeg({ quality: 90, chromaSubsampling: '4:2:0' })
    .toBuffer();
}

/**
 * Converts a video file to MJPEG 640×480 with Debian's ffmpeg, cropped to fill the frame (black
 * bars would frame the face and make the attack trivially visible to the border check).
 */
export function videoClip(source: string, file: string): string {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const fill = 'scale=640:480:force_original_aspect_ratio=increase,crop=640:480';
  execFileSync('ffmpeg', ['-y', '-loglevel', 'error', '-i', source, '-vf', fill, '-pix_fmt', 'yuvj420p', '-q:v', '3', '-f', 'mjpeg', file]);
  return file;
}

export const hasFfmpeg = (() => {
  try {
    execFileSync('ffmpeg', ['-version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/** The integrator's callback: a tiny page on another port that records where browsers landed. */
export async function callbackServer(): Promise<{ origin: string; landed: URL[]; close(): Promise<void> }> {
  const landed: URL[] = [];
  const server = http.createServer((req, res) => {
    landed.push(new URL(req.url ?? '/', 'http://localhost'));
    res.setHeader('content-type', 'text/html');
    res.end('<!doctype html><title>Integrator</title><h1>Back at the integrator</h1>');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    origin: `http://localhost:${port}`,
    landed,
    close: () => new Promise((r) => server.close(() => r())),
  };
}
