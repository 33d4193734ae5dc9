import { WorkerPool } from './pool.ts';
import type { EngineOptions } from './engine.ts';
import type { AnalyzeOptions, FrameAnalysis } from './types.ts';

export { QueueFullError, WorkerTaskError } from './pool.ts';
export { ImageInputError, sniffImageFormat } from './image.ts';
export type { AnalyzeOptions, FrameAnalysis, FaceObservation, QualityProblem } from './types.ts';

/**
 * The face engine as the rest of the service sees it: analyse an image off the event loop.
 * Images are transferred to a worker and never kept; only the analysis comes back.
 */
export class FaceAnalyzer {
  readonly #pool: WorkerPool;

  constructor(options: EngineOptions & { workers: number; queueSize: number }) {
    const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
    this.#pool = new WorkerPool({
      workerUrl: new URL(`./worker${ext}`, import.meta.url),
      workerData: { backend: options.backend, maxPixels: options.maxPixels, quality: options.quality },
      size: options.workers,
      queueSize: options.queueSize,
    });
    this.#pool.on('error', () => undefined);
  }

  ready(): Promise<void> {
    return this.#pool.ready();
  }

  get isReady(): boolean {
    return this.#pool.isReady;
  }

  get load(): { busy: number; queued: number } {
    return { busy: this.#pool.busy, queued: this.#pool.queued };
  }

  /** `bytes` is consumed: its buffer is handed to the worker. */
  async analyze(bytes: Uint8Array, options: AnalyzeOptions): Promise<FrameAnalysis> {
    const owned =
      bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer
        ? bytes.buffer
        : bytes.slice().buffer;
    const result = await this.#pool.run<FrameAnalysis>({ type: 'analyze', image: owned, options }, [owned]);
    return result;
  }

  close(): Promise<void> {
    return this.#pool.close();
  }
}
