import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';

/** Thrown when every worker is busy and the wait queue is full: callers answer 503. */
export class QueueFullError extends Error {
  constructor(readonly retryAfterSeconds: number) {
    super('the face engine is busy');
  }
}

/** A failure raised inside a worker, carried across the thread boundary by code. */
export class WorkerTaskError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

interface Task {
  id: number;
  message: unknown;
  transfer: ArrayBuffer[];
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  busy: Task | undefined;
  ready: boolean;
}

export interface PoolOptions {
  /** Module the workers run; it must answer `{ id, ok, result | error }` for each `{ id, ...message }`. */
  workerUrl: URL;
  workerData: unknown;
  size: number;
  queueSize: number;
}

/**
 * A fixed set of worker threads with a bounded FIFO queue. Heavy work never runs on the HTTP
 * event loop, and a full queue fails fast instead of piling up latency. A worker that dies is
 * replaced and its task fails; the others carry on.
 */
export class WorkerPool extends EventEmitter {
  readonly #slots: Slot[] = [];
  readonly #queue: Task[] = [];
  #nextId = 1;
  #closed = false;
  #failed = false;
  #taskMillis = 150; // running estimate, for Retry-After

  constructor(private readonly options: PoolOptions) {
    super();
    for (let i = 0; i < options.size; i++) this.#slots.push(this.#spawn());
  }

  /** Resolves once every worker has loaded its models (rejects if one fails to start). */
  async ready(): Promise<void> {
    await Promise.all(
      this.#slots.map(
        (slot) =>
          new Promise<void>((resolve, reject) => {
            if (slot.ready) return resolve();
            slot.worker.on('message', (m: { type?: string; error?: { message: string } }) => {
              if (m.type === 'ready') resolve();
              if (m.type === 'startup-failed') reject(new Error(m.error?.message ?? 'worker failed to start'));
            });
            slot.worker.once('error', reject);
            slot.worker.once('exit', (code) => reject(new Error(`face engine worker exited with code ${code}`)));
          }),
      ),
    );
  }

  get isReady(): boolean {
    return this.#slots.every((s) => s.ready);
  }

  get queued(): number {
    return this.#queue.length;
  }

  get busy(): number {
    return this.#slots.filter((s) => s.busy).length;
  }

  run<T>(message: object, transfer: ArrayBuffer[] = []): Promise<T> {
    if (this.#closed) return Promise.reject(new Error('the face engine is shut down'));
    const idle = this.#slots.find((s) => s.ready && !s.busy);
    if (!idle && this.#queue.length >= this.options.queueSize) {
      const waitMillis = ((this.#queue.length + 1) * this.#taskMillis) / this.#slots.length;
      return Promise.reject(new QueueFullError(Math.max(1, Math.ceil(waitMillis / 1000))));
    }
    return new Promise<T>((resolve, reject) => {
      const task: Task = { id: this.#nextId++, message, transfer, resolve: resolve as (v: unknown) => void, reject };
      if (idle) this.#dispatch(idle, task);
      else this.#queue.push(task);
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const task of this.#queue.splice(0)) task.reject(new Error('the face engine is shut down'));
    await Promise.all(this.#slots.map((s) => s.worker.terminate()));
  }

  #spawn(): Slot {
    const worker = startWorker(this.options.workerUrl, this.options.workerData);
    const slot: Slot = { worker, busy: undefined, ready: false };
    worker.on('message', (m: { type?: string; id?: number; ok?: boolean; result?: unknown; error?: { code: string; message: string } }) => {
      if (m.type === 'ready') {
        slot.ready = true;
        this.#drain(slot);
        return;
      }
      if (m.type === 'startup-failed') {
        // a worker that cannot load its models will not do better on a restart
        this.#failed = true;
        this.emit('error', new Error(`face engine worker failed to start: ${m.error?.message}`));
        return;
      }
      const task = slot.busy;
      if (!task || task.id !== m.id) return;
      slot.busy = undefined;
      if (m.ok) task.resolve(m.result);
      else task.reject(new WorkerTaskError(m.error?.code ?? 'internal', m.error?.message ?? 'analysis failed'));
      this.#drain(slot);
    });
    worker.on('error', (err) => {
      if (!slot.ready) this.#failed = true; // it could not even load: restarting would loop
      this.emit('worker-error', err);
    });
    worker.on('exit', () => {
      if (this.#closed || this.#failed) return;
      slot.busy?.reject(new WorkerTaskError('internal', 'the face engine worker stopped'));
      const index = this.#slots.indexOf(slot);
      if (index >= 0) this.#slots[index] = this.#spawn();
    });
    return slot;
  }

  #dispatch(slot: Slot, task: Task): void {
    slot.busy = task;
    const started = performance.now();
    const done = () => {
      this.#taskMillis = 0.8 * this.#taskMillis + 0.2 * (performance.now() - started);
    };
    const { resolve, reject } = task;
    task.resolve = (v) => {
      done();
      resolve(v);
    };
    task.reject = (e) => {
      done();
      reject(e);
    };
    slot.worker.postMessage({ id: task.id, ...(task.message as object) }, task.transfer);
  }

  #drain(slot: Slot): void {
    if (!slot.ready) return;
    const next = this.#queue.shift();
    if (next) this.#dispatch(slot, next);
  }
}

/**
 * Starts a worker on a module. Under tsx (tests, `npm run dev`) a .ts worker needs the TypeScript
 * loader registered inside the worker before its module is imported; compiled code runs directly.
 */
function startWorker(url: URL, workerData: unknown): Worker {
  if (!url.pathname.endsWith('.ts')) return new Worker(url, { workerData });
  return new Worker(new URL('./worker-tsx.mjs', import.meta.url), { workerData, argv: [url.href] });
}
