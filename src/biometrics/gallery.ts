import { EMBEDDING_DIM } from './embedding.ts';

export interface Match {
  externalUserId: string;
  score: number;
}

/**
 * One tenant's enrolled templates, held as one contiguous matrix of unit vectors so a 1:N search
 * is a single pass of dot products over memory (no per-template objects to chase).
 */
export class Gallery {
  #ids: string[] = [];
  #rowOf = new Map<string, number>();
  #matrix = new Float32Array(EMBEDDING_DIM * 64);

  get size(): number {
    return this.#ids.length;
  }

  has(externalUserId: string): boolean {
    return this.#rowOf.has(externalUserId);
  }

  upsert(externalUserId: string, embedding: Float32Array): void {
    if (embedding.length !== EMBEDDING_DIM) throw new Error(`embedding must have ${EMBEDDING_DIM} dimensions`);
    let row = this.#rowOf.get(externalUserId);
    if (row === undefined) {
      row = this.#ids.length;
      if ((row + 1) * EMBEDDING_DIM > this.#matrix.length) {
        const grown = new Float32Array(this.#matrix.length * 2);
        grown.set(this.#matrix);
        this.#matrix = grown;
      }
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
    const m = this.#matrix;
    const n = this.#ids.length;
    const skip = excludeUserId === undefined ? -1 : (this.#rowOf.get(excludeUserId) ?? -1);
    let bestRow = -1;
    let bestScore = -Infinity;
    for (let r = 0; r < n; r++) {
      if (r === skip) continue;
      const s = dot128(probe, m, r * EMBEDDING_DIM);
      if (s > bestScore) {
        bestScore = s;
        bestRow = r;
      }
    }
    return bestRow < 0 ? undefined : { externalUserId: this.#ids[bestRow], score: bestScore };
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
}
