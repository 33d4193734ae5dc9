/**
 * Answers awaited by key (a request id, a change id): `wait` resolves with the answer `settle`
 * gives for its key, or with null after `ms`. An answer nobody waits for is dropped.
 */
export class Waiters<T> {
  readonly #waiting = new Map<string, (answer: T | null) => void>();

  wait(key: string, ms: number): Promise<T | null> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.#finish(key, null), ms);
      this.#waiting.set(key, (answer) => {
        clearTimeout(timer);
        resolve(answer);
      });
    });
  }

  /** Gives the answer to whoever waits for `key`; false when nobody does. */
  settle(key: string, answer: T): boolean {
    return this.#finish(key, answer);
  }

  #finish(key: string, answer: T | null): boolean {
    const waiting = this.#waiting.get(key);
    if (!waiting) return false;
    this.#waiting.delete(key);
    waiting(answer);
    return true;
  }
}
