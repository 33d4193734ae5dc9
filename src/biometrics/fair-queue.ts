/**
 * The engine's waiting line: one queue per lane (a tenant), plus the doors' lane that always
 * goes first. The lanes take turns, one item each, so a lane's backlog never delays another lane
 * by more than one item per waiting lane. Every operation is O(1) but for `position`.
 */
export class FairQueue<T> {
  readonly #doors: T[] = [];
  readonly #lanes = new Map<string, T[]>();
  /** Lanes with waiting items, in the order of their next turn. */
  readonly #turns: string[] = [];
  #size = 0;

  get size(): number {
    return this.#size;
  }

  /** Items waiting in one lane (or in the doors' lane). */
  waiting(lane: string, priority = false): number {
    return priority ? this.#doors.length : (this.#lanes.get(lane)?.length ?? 0);
  }

  push(item: T, lane: string, priority = false): void {
    this.#size++;
    if (priority) return void this.#doors.push(item);
    const queue = this.#lanes.get(lane);
    if (queue) return void queue.push(item);
    this.#lanes.set(lane, [item]);
    this.#turns.push(lane);
  }

  /** The next item: the doors' first, then one of each waiting lane in turn. */
  shift(): T | undefined {
    const door = this.#doors.shift();
    if (door !== undefined) {
      this.#size--;
      return door;
    }
    const lane = this.#turns.shift();
    if (lane === undefined) return undefined;
    const queue = this.#lanes.get(lane) as T[];
    const item = queue.shift();
    if (queue.length > 0) this.#turns.push(lane);
    else this.#lanes.delete(lane);
    this.#size--;
    return item;
  }

  /** How many items are taken before the next item of this lane: the doors', and one per lane whose turn comes first. */
  ahead(lane: string, priority = false): number {
    if (priority) return this.#doors.length;
    const turn = this.#turns.indexOf(lane);
    return this.#doors.length + (turn >= 0 ? turn : this.#turns.length);
  }
}
