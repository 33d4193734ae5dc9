import { parentPort, workerData } from 'node:worker_threads';
import { FaceEngine, type EngineOptions } from './engine.ts';
import { ImageInputError } from './image.ts';
import type { AnalyzeOptions } from './types.ts';

/** Worker-thread entry: loads the engine once, then analyses one image per message. */
if (!parentPort) throw new Error('worker.ts must run as a worker thread');
const port = parentPort;

interface AnalyzeRequest {
  id: number;
  type: 'analyze';
  image: ArrayBuffer;
  options: AnalyzeOptions;
}

try {
  const engine = await FaceEngine.create(workerData as EngineOptions);
  port.on('message', async (req: AnalyzeRequest) => {
    try {
      const analysis = await engine.analyze(new Uint8Array(req.image), req.options);
      const transfer = Object.values(analysis.embeddings).map((e) => e.buffer as ArrayBuffer);
      port.postMessage({ id: req.id, ok: true, result: analysis }, transfer);
    } catch (err) {
      // only the code and a fixed message cross back: never pixel data or library internals
      const code = err instanceof ImageInputError ? err.kind : 'internal';
      const message = err instanceof ImageInputError ? err.message : 'the face engine failed on this image';
      port.postMessage({ id: req.id, ok: false, error: { code, message } });
    }
  });
  port.postMessage({ type: 'ready', backend: engine.backend });
} catch (err) {
  port.postMessage({ type: 'startup-failed', error: { message: err instanceof Error ? err.message : String(err) } });
}
