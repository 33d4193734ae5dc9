// A real worker thread for the pool's own tests: it "analyses" by keeping its thread busy for
// the time it is asked to (as a decoder stuck on a hostile image would), then answers.
import { parentPort, threadId } from 'node:worker_threads';

parentPort.on('message', (m) => {
  const end = Date.now() + m.busyMs;
  while (Date.now() < end) {
    // busy, like a synchronous decoder
  }
  parentPort.postMessage({ id: m.id, ok: true, result: { tag: m.tag, threadId } });
});
parentPort.postMessage({ type: 'ready' });
