import { spawn } from 'node:child_process';
import fs from 'node:fs';
import type { CaptureService, FrameAnalyzer } from '../capture/service.ts';
import type { Logger } from '../core/logger.ts';
import type { CameraConfig, DeviceConfig } from '../device/config.ts';
import type { KioskService } from './kiosk.ts';

/** Where the headless turnstile gets its frames: a real camera or, for tests and demos, files. */
export interface Camera {
  /** One JPEG frame, in memory. */
  grab(): Promise<Uint8Array>;
  close(): void;
}

/**
 * Frames from a V4L2 camera through fswebcam, written to its standard output and read from the
 * pipe: no frame ever touches the disk. (node-webcam wraps the same program but either saves each
 * frame to a file or passes it through a text channel that corrupts binary data.)
 */
export class FswebcamCamera implements Camera {
  constructor(private readonly config: CameraConfig) {}

  grab(): Promise<Uint8Array> {
    const { device, width, height } = this.config;
    const args = ['-q', '-d', device, '-r', `${width}x${height}`, '-S', '2', '--no-banner', '--jpeg', '90', '-'];
    return new Promise((resolve, reject) => {
      const child = spawn('fswebcam', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      const chunks: Buffer[] = [];
      let errors = '';
      child.stdout.on('data', (c: Buffer) => chunks.push(c));
      child.stderr.on('data', (c: Buffer) => (errors += c.toString()));
      child.on('error', (err) => reject(new Error(`fswebcam could not run (${err.message}): apt-get install fswebcam`)));
      child.on('close', (code) => {
        const frame = Buffer.concat(chunks);
        if (code === 0 && frame.length > 0) resolve(new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength));
        else reject(new Error(`fswebcam failed on ${device}: ${errors.trim().split('\n')[0] || `exit ${code}`}`));
      });
    });
  }

  close(): void {}
}

/** Plays image files in a loop, as if a camera saw them (tests, demos, `camera.driver: simulated`). */
export class SimulatedCamera implements Camera {
  #next = 0;

  constructor(private readonly files: string[]) {
    if (files.length === 0) throw new Error('camera.simulated_images is empty');
  }

  async grab(): Promise<Uint8Array> {
    const file = this.files[this.#next++ % this.files.length];
    return new Uint8Array(await fs.promises.readFile(file));
  }

  close(): void {}
}

export function cameraFor(config: CameraConfig): Camera {
  return config.driver === 'simulated' ? new SimulatedCamera(config.simulated_images) : new FswebcamCamera(config);
}

const MIN_FACE_PX = 80; // a face this large is someone at the turnstile
const MAX_SESSION_FRAMES = 12; // decide after this many frames even without enough usable ones
const GONE_MS = 1200;

/**
 * Headless turnstile mode: the same identify-and-open loop as the kiosk, without a screen. It
 * watches the camera; when a face comes close it opens an identify session for its door, feeds it
 * frames until there are enough usable ones, completes it (the access controller then decides and
 * pulses the relay), and waits for the person to pass before looking again. Without a screen no
 * challenge can be shown, so the door must use passive liveness.
 */
export class Turnstile {
  #stopped = false;

  constructor(
    private readonly door: string,
    private readonly deps: {
      camera: Camera;
      /** How often the camera is looked at (camera.interval_ms of the device file). */
      intervalMs: number;
      analyzer: FrameAnalyzer;
      kiosk: KioskService;
      capture: CaptureService;
      config: DeviceConfig;
      logger: Logger;
    },
  ) {}

  stop(): void {
    this.#stopped = true;
  }

  async run(): Promise<void> {
    const { camera, analyzer, kiosk, capture, logger } = this.deps;
    const interval = this.deps.intervalMs;
    while (!this.#stopped) {
      const started = performance.now();
      try {
        const frame = await camera.grab();
        const seen = await analyzer.analyze(frame.slice(), { mode: 'capture', models: [] }, DOOR_ROUTE); // presence only: no model runs
        if (seen.face && Math.max(seen.face.box.width, seen.face.box.height) >= MIN_FACE_PX && !seen.problems.includes('multiple_faces')) {
          await this.#decide(frame, kiosk, capture);
          await this.#waitUntilGone(camera, analyzer);
        }
      } catch (err) {
        logger.warn({ err: { name: (err as Error).name, message: (err as Error).message } }, 'turnstile frame failed');
      }
      await sleep(Math.max(0, interval - (performance.now() - started)));
    }
  }

  async #decide(first: Uint8Array, kiosk: KioskService, capture: CaptureService): Promise<void> {
    const { token } = await kiosk.startIdentify(this.door);
    let frame = first;
    for (let i = 0; i < MAX_SESSION_FRAMES && !this.#stopped; i++) {
      const fb = await capture.submitFrame(token, frame);
      if (fb.acceptedFrames >= fb.requiredFrames) break;
      frame = await this.deps.camera.grab();
    }
    await capture.complete(token);
  }

  /** The same person is not processed again until they have gone or the cool-down has passed. */
  async #waitUntilGone(camera: Camera, analyzer: FrameAnalyzer): Promise<void> {
    const until = performance.now() + this.deps.config.kiosk.cooldown_seconds * 1000;
    let lastSeen = performance.now();
    while (!this.#stopped && performance.now() < until) {
      const a = await analyzer.analyze(await camera.grab(), { mode: 'capture', models: [] }, DOOR_ROUTE);
      if (a.face) lastSeen = performance.now();
      else if (performance.now() - lastSeen > GONE_MS) return;
      await sleep(this.deps.intervalMs);
    }
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The turnstile's camera is the device's own door: its frames go first in the engine's queue. */
const DOOR_ROUTE = { lane: 'doors', priority: true } as const;
