import { EMBEDDING_DIM } from './embedding.ts';
import { simdModule } from './simd.ts';

export interface Match {
  externalUserId: string;
  score: number;
}

const ROW_BYTES = EMBEDDING_DIM * 4;
const PAGE = 65_536;
/** WebAssembly memory layout: the probe at 0, the template rows from here, then the score scratch. */
const ROWS_AT = 1024;

type Scan = (probe: number, rows: number, count: number, out: number) => void;

/**
 * One tenant's enrolled templates, held as one contiguous matrix of unit vectors so a 1:N search
 * is a single pass of dot products over memory (no per-template objects to chase). The matrix
 * lives in WebAssembly memory and the scan runs in SIMD (simd.ts); without SIMD the same layout
 * is scanned in JS.
 */
export class Gallery {
  #ids: string[] = [];
  #rowOf = new Map<string, number>();
  #capacity = 0;
  #memory: WebAssembly.Memory | undefined;
  #scan: Scan | undefined;
  #matrix = new Float32Array(0);
  #probe = new Float32Array(0);
  #scores = new Float32Array(0);

  /** `simd: false` forces the JS scan (tests compare both). */
  constructor(options: { simd?: boolean } = {}) {
    const module = options.simd === false ? null : simdModule();
    if (module) {
      this.#memory = new WebAssembly.Memory({ initial: 1 });
      const instance = new WebAssembly.Instance(module, { env: { memory: this.#memory } });
      this.#scan = instance.exports.scores as Scan;
    }
    this.#reserve(64);
  }

  get size(): number {
    return this.#ids.length;
  }

  get usesSimd(): boolean {
    return this.#scan !== undefined;
  }

  /** The people held, in no particular order. */
  ids(): string[] {
    return [...this.#ids];
  }


  upsert(externalUserId: string, embedding: Float32Array): void {
    if (embedding.length !== EMBEDDING_DIM) throw new Error(`embedding must have ${EMBEDDING_DIM} dimensions`);
    let row = this.#rowOf.get(externalUserId);
    if (row === undefined) {
      row = this.#ids.length;
      if (row === this.#capacity) this.#reserve(this.#capacity * 2);
      this.#ids.push(externalUserId);
      this.#rowOf.set(externalUserId, row);
    }
    this.#matrix.set(embedding, row * EMBEDDING_DIM);
  }

  /** Removes a template by moving the last row into its place. */
  remove(externalUserId: string): boolean {
    const row = this.#rowOf.get(externalUserId);
    if (row === undefined) return false;
    const last = this.#ids.length - 1;
    if (row !== last) {
      const movedId = this.#ids[last];
      this.#matrix.copyWithin(row * EMBEDDING_DIM, last * EMBEDDING_DIM, (last + 1) * EMBEDDING_DIM);
      this.#ids[row] = movedId;
      this.#rowOf.set(movedId, row);
    }
    this.#ids.pop();
    this.#rowOf.delete(externalUserId);
    this.#matrix.fill(0, last * EMBEDDING_DIM, (last + 1) * EMBEDDING_DIM);
    return true;
  }

  /** The best-scoring template (cosine similarity), optionally ignoring one user. */
  best(probe: Float32Array, excludeUserId?: string): Match | undefined {
    return this.topTwo(probe, excludeUserId)[0];
  }

  /**
   * The two best-scoring templates, best first (fewer when the gallery holds fewer). One pass:
   * the runner-up costs nothing over the best, and identification needs it for its ambiguity check.
   */
  topTwo(probe: Float32Array, excludeUserId?: string): Match[] {
    const n = this.#ids.length;
    const skip = excludeUserId === undefined ? -1 : (this.#rowOf.get(excludeUserId) ?? -1);
    const scores = this.#scores;
    if (this.#scan) {
      this.#probe.set(probe);
      this.#scan(0, ROWS_AT, n, scores.byteOffset);
    } else {
      for (let r = 0; r < n; r++) scores[r] = dot128(probe, this.#matrix, r * EMBEDDING_DIM);
    }
    let first = -1;
    let second = -1;
    for (let r = 0; r < n; r++) {
      if (r === skip) continue;
      if (first < 0 || scores[r] > scores[first]) {
        second = first;
        first = r;
      } else if (second < 0 || scores[r] > scores[second]) {
        second = r;
      }
    }
    return [first, second].filter((r) => r >= 0).map((r) => ({ externalUserId: this.#ids[r], score: scores[r] }));
  }

  /** Similarity of the probe to one user's template, or undefined when they have none here. */
  scoreOf(probe: Float32Array, externalUserId: string): number | undefined {
    const row = this.#rowOf.get(externalUserId);
    return row === undefined ? undefined : dot128(probe, this.#matrix, row * EMBEDDING_DIM);
  }

  /** Grows to `capacity` rows, keeping the rows already stored. */
  #reserve(capacity: number): void {
    if (this.#memory) {
      const needed = ROWS_AT + capacity * ROW_BYTES + capacity * 4;
      const pages = Math.ceil(needed / PAGE) - this.#memory.buffer.byteLength / PAGE;
      if (pages > 0) this.#memory.grow(pages);
      // the rows stay where they are; the probe and score views are re-made on the grown buffer
      const buffer = this.#memory.buffer;
      this.#probe = new Float32Array(buffer, 0, EMBEDDING_DIM);
      this.#matrix = new Float32Array(buffer, ROWS_AT, capacity * EMBEDDING_DIM);
      this.#scores = new Float32Array(buffer, ROWS_AT + capacity * ROW_BYTES, capacity);
    } else {
      const grown = new Float32Array(capacity * EMBEDDING_DIM);
      grown.set(this.#matrix);
      this.#matrix = grown;
      this.#scores = new Float32Array(capacity);
    }
    this.#capacity = capacity;
  }
}

/** Dot product of a 128-D probe with the row at `offset`; unrolled with four accumulators. */
function dot128(p: Float32Array, m: Float32Array, offset: number): number {
  let a = 0;
  let b = 0;
  let c = 0;
  let d = 0;
  for (let i = 0; i < 128; i += 4) {
    a += p[i] * m[offset + i];
    b += p[i + 1] * m[offset + i + 1];
    c += p[i + 2] * m[offset + i + 2];
    d += p[i + 3] * m[offset + i + 3];
  }
  return a + b + c + d;
}

/** The in-memory 1:N index of every tenant, loaded at start and kept current on each change. */
export class GalleryIndex {
  #tenants = new Map<string, Gallery>();

  of(tenantId: string): Gallery {
    let g = this.#tenants.get(tenantId);
    if (!g) {
      g = new Gallery();
      this.#tenants.set(tenantId, g);
    }
    return g;
  }

  get size(): number {
    let n = 0;
    for (const g of this.#tenants.values()) n += g.size;
    return n;
  }

  /** Templates per tenant. */
  sizes(): { tenantId: string; size: number }[] {
    return [...this.#tenants].map(([tenantId, g]) => ({ tenantId, size: g.size }));
  }
}
