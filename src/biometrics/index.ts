import { WorkerPool, type TaskRoute } from './pool.ts';
import type { EngineOptions } from './engine.ts';
import { type DimensionLimits, checkImageHeader } from './image-header.ts';
import type { AnalyzeOptions, FrameAnalysis } from './types.ts';

export { QueueFullError, WorkerTaskError, type TaskRoute } from './pool.ts';
export { ImageInputError, sniffImageFormat } from './image.ts';
export type { AnalyzeOptions, FrameAnalysis, FaceObservation, QualityProblem } from './types.ts';

export interface AnalyzerOptions extends EngineOptions, Omit<DimensionLimits, 'maxPixels'> {
  workers: number;
  /** Frames one tenant (or the doors) may have waiting for a worker. */
  queueSize: number;
  /** A frame still being analysed after this long ends its worker, which is replaced. */
  frameTimeoutMs: number;
}

/** Defaults for the limits that are not settings of their own (tests, evaluations). */
export const DEFAULT_ANALYZER_LIMITS = { maxSide: 8192, maxAspectRatio: 4, frameTimeoutMs: 10_000 } as const;

/**
 * The face engine as the rest of the service sees it: analyse an image off the event loop.
 * An image is first judged by its header on this thread (sides, area, shape), so an image that
 * would cost its decoder seconds never reaches a worker. Then it is transferred to a worker,
 * through the fair queue, and never kept; only the analysis comes back.
 */
export class FaceAnalyzer {
  readonly #pool: WorkerPool;
  readonly #limits: DimensionLimits;

  constructor(options: AnalyzerOptions) {
    const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
    this.#limits = { maxPixels: options.maxPixels, maxSide: options.maxSide, maxAspectRatio: options.maxAspectRatio };
    this.#pool = new WorkerPool({
      workerUrl: new URL(`./worker${ext}`, import.meta.url),
      workerData: { backend: options.backend, maxPixels: options.maxPixels, quality: options.quality },
      size: options.workers,
      queueSize: options.queueSize,
      taskTimeoutMs: options.frameTimeoutMs,
    });
    this.#pool.on('error', () => undefined);
  }

  ready(): Promise<void> {
    return this.#pool.ready();
  }

  get isReady(): boolean {
    return this.#pool.isReady;
  }

  get closed(): boolean {
    return this.#pool.closed;
  }

  get load(): { busy: number; queued: number } {
    return { busy: this.#pool.busy, queued: this.#pool.queued };
  }

  /** `bytes` is consumed: its buffer is handed to the worker. `route`: whose frame it is. */
  async analyze(bytes: Uint8Array, options: AnalyzeOptions, route: TaskRoute = { lane: 'default' }): Promise<FrameAnalysis> {
    checkImageHeader(bytes, this.#limits);
    const owned =
      bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer
        ? bytes.buffer
        : bytes.slice().buffer;
    return this.#pool.run<FrameAnalysis>({ type: 'analyze', image: owned, options }, [owned], route);
  }

  close(): Promise<void> {
    return this.#pool.close();
  }
}
