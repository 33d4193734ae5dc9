import { EventEmitter } from 'node:events';
import { Worker } from 'node:worker_threads';
import { FairQueue } from './fair-queue.ts';

/** Thrown when a lane's queue is full: callers answer 503 with Retry-After. */
export class QueueFullError extends Error {
  constructor(readonly retryAfterSeconds: number) {
    super('the face engine is busy');
  }
}

/** A failure raised inside a worker (or a worker that ran out of time), carried by code. */
export class WorkerTaskError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** For `timeout`: when to try again. */
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }
}

/** Who a task is for: its lane (a tenant), and whether it is the device's own door. */
export interface TaskRoute {
  lane: string;
  /** The device's own doors go before every tenant's frames. */
  priority?: boolean;
}

interface Task {
  id: number;
  route: TaskRoute;
  message: unknown;
  transfer: ArrayBuffer[];
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  busy: { task: Task; timer: NodeJS.Timeout; started: number } | undefined;
  ready: boolean;
}

export interface PoolOptions {
  /** Module the workers run; it must answer `{ id, ok, result | error }` for each `{ id, ...message }`. */
  workerUrl: URL;
  workerData: unknown;
  size: number;
  /** Tasks one lane may have waiting (the doors' lane has its own). */
  queueSize: number;
  /** A task running longer ends its worker, which is replaced. */
  taskTimeoutMs: number;
}

/**
 * A fixed set of worker threads with a fair, bounded queue (FairQueue: the doors' own lane
 * first, then the tenants in turn). Heavy work never runs on the HTTP event loop. A full lane
 * fails fast, with a Retry-After computed from the queue ahead and the measured task time. A task that overruns its time limit ends its worker, which
 * is replaced; a worker that dies is replaced and its task fails; the others carry on.
 */
export class WorkerPool extends EventEmitter {
  readonly #slots: Slot[] = [];
  readonly #queue = new FairQueue<Task>();
  #nextId = 1;
  #closed = false;
  #failed = false;
  /** Measured time of a task, for Retry-After (null until one has run). */
  #taskMillis: number | null = null;

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

  /** Shut down on purpose: its workers' exits are not failures. */
  get closed(): boolean {
    return this.#closed;
  }

  get queued(): number {
    return this.#queue.size;
  }

  get busy(): number {
    return this.#slots.filter((s) => s.busy).length;
  }

  run<T>(message: object, transfer: ArrayBuffer[], route: TaskRoute): Promise<T> {
    if (this.#closed) return Promise.reject(new Error('the face engine is shut down'));
    const idle = this.#slots.find((s) => s.ready && !s.busy);
    if (!idle && this.#queue.waiting(route.lane, route.priority) >= this.options.queueSize) {
      return Promise.reject(new QueueFullError(this.#retryAfter(route)));
    }
    return new Promise<T>((resolve, reject) => {
      const task: Task = { id: this.#nextId++, route, message, transfer, resolve: resolve as (v: unknown) => void, reject };
      if (idle) this.#dispatch(idle, task);
      else this.#queue.push(task, route.lane, route.priority);
    });
  }

  /**
   * Seconds until a task of this lane would be taken, from the queue as it is: the tasks taken
   * before it (FairQueue.ahead), and one more for a worker to come free, each taking the measured
   * task time, shared by the workers.
   */
  #retryAfter(route: TaskRoute): number {
    const millis = ((this.#queue.ahead(route.lane, route.priority) + 1) * (this.#taskMillis ?? 1000)) / Math.max(1, this.#slots.length);
    return Math.max(1, Math.ceil(millis / 1000));
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (let task = this.#queue.shift(); task; task = this.#queue.shift()) task.reject(new Error('the face engine is shut down'));
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
      const running = slot.busy;
      if (!running || running.task.id !== m.id) return;
      this.#finish(slot);
      if (m.ok) running.task.resolve(m.result);
      else running.task.reject(new WorkerTaskError(m.error?.code ?? 'internal', m.error?.message ?? 'analysis failed'));
      this.#drain(slot);
    });
    worker.on('error', (err) => {
      if (!slot.ready) this.#failed = true; // it could not even load: restarting would loop
      this.emit('worker-error', err);
    });
    worker.on('exit', () => {
      if (this.#closed || this.#failed) return;
      const running = slot.busy;
      if (running) {
        this.#finish(slot);
        running.task.reject(new WorkerTaskError('internal', 'the face engine worker stopped'));
      }
      const index = this.#slots.indexOf(slot);
      if (index >= 0) this.#slots[index] = this.#spawn();
    });
    return slot;
  }

  #dispatch(slot: Slot, task: Task): void {
    const timer = setTimeout(() => this.#overrun(slot), this.options.taskTimeoutMs);
    slot.busy = { task, timer, started: performance.now() };
    slot.worker.postMessage({ id: task.id, ...(task.message as object) }, task.transfer);
  }

  /** Clears the slot's task and measures it. */
  #finish(slot: Slot): void {
    const running = slot.busy;
    if (!running) return;
    clearTimeout(running.timer);
    slot.busy = undefined;
    const took = performance.now() - running.started;
    this.#taskMillis = this.#taskMillis === null ? took : 0.8 * this.#taskMillis + 0.2 * took;
  }

  /** A task over its time limit: it fails, and its worker is ended (the exit handler replaces it). */
  #overrun(slot: Slot): void {
    const running = slot.busy;
    if (!running) return;
    this.#finish(slot);
    slot.ready = false;
    const retry = this.#retryAfter(running.task.route);
    running.task.reject(new WorkerTaskError('timeout', `the frame took longer than ${this.options.taskTimeoutMs} ms to analyse and was dropped`, retry));
    this.emit('worker-timeout');
    void slot.worker.terminate();
  }

  #drain(slot: Slot): void {
    if (!slot.ready || slot.busy) return;
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
