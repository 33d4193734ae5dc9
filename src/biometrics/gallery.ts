import { type Embeddings, type ModelId, MATCHERS, matcher } from './matchers/index.ts';
import { simdModule } from './simd.ts';

export interface Match {
  externalUserId: string;
  score: number;
}

const PAGE = 65_536;
/** WebAssembly memory layout: the probe at 0, the template rows from here, then the score scratch. */
const ROWS_AT = 4096;
/**
 * Above this many dimensions the scan reads an int8 copy of the rows (a quarter of the bytes of
 * float32) and the best few it finds are scored again exactly: a 512-D gallery of 100,000 people
 * reads 51 MB per search instead of 205 MB (README, "Speed").
 */
const COMPACT_ABOVE = 128;
/** Candidates of the int8 scan scored again in float32: far more than the int8 error can reorder. */
const RESCORED = 16;

type Scan = (probe: number, rows: number, count: number, out: number) => void;

/**
 * One tenant's enrolled templates of one model, held as one contiguous matrix of unit vectors so a
 * 1:N search is a single pass of dot products over memory (no per-template objects to chase). The
 * matrix lives in WebAssembly memory and the scan runs in SIMD (simd.ts); without SIMD the same
 * layout is scanned in JS. Wide embeddings (512-D) are scanned as int8, each row with its own
 * scale, and the best candidates rescored from the float32 rows: the answer is exact.
 */
export class Gallery {
  #ids: string[] = [];
  #rowOf = new Map<string, number>();
  #capacity = 0;
  #memory: WebAssembly.Memory | undefined;
  #scan: Scan | undefined;
  readonly #compact: boolean;
  /** The float32 rows: in WebAssembly memory when they are what the scan reads, else here. */
  #exact: Float32Array = new Float32Array(0);
  /** The scan's view of the rows and probe (float32, or int8 when compact) and its output (f32 or i32). */
  #rows: Float32Array | Int8Array = new Float32Array(0);
  #probe: Float32Array | Int8Array = new Float32Array(0);
  #out: Float32Array | Int32Array = new Float32Array(0);
  /** Compact: each int8 row's scale back to float (max |v| / 127). */
  #rowScale: Float32Array = new Float32Array(0);
  #approx: Float32Array = new Float32Array(0);
  readonly dimensions: number;

  /**
   * `dimensions`: of the model's embeddings (128 by default). `simd: false` forces the JS scan,
   * `compact: false` the float32 SIMD scan of wide rows (tests and the benchmark compare them).
   */
  constructor(options: { dimensions?: number; simd?: boolean; compact?: boolean } = {}) {
    this.dimensions = options.dimensions ?? 128;
    if (this.dimensions * 4 > ROWS_AT) throw new Error(`a gallery holds at most ${ROWS_AT / 4} dimensions`);
    const compact = (options.compact ?? true) && this.dimensions > COMPACT_ABOVE;
    const module = options.simd === false ? null : simdModule(this.dimensions, compact);
    this.#compact = compact && module !== null;
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

  /** The scan reads int8 rows (then rescores the best in float32). */
  get compact(): boolean {
    return this.#compact;
  }

  /** The people held, in no particular order. */
  ids(): string[] {
    return [...this.#ids];
  }

  upsert(externalUserId: string, embedding: Float32Array): void {
    if (embedding.length !== this.dimensions) throw new Error(`embedding must have ${this.dimensions} dimensions`);
    let row = this.#rowOf.get(externalUserId);
    if (row === undefined) {
      row = this.#ids.length;
      if (row === this.#capacity) this.#reserve(this.#capacity * 2);
      this.#ids.push(externalUserId);
      this.#rowOf.set(externalUserId, row);
    }
    this.#exact.set(embedding, row * this.dimensions);
    if (this.#compact) this.#rowScale[row] = quantize(embedding, this.#rows as Int8Array, row * this.dimensions);
  }

  /** Removes a template by moving the last row into its place. */
  remove(externalUserId: string): boolean {
    const row = this.#rowOf.get(externalUserId);
    if (row === undefined) return false;
    const last = this.#ids.length - 1;
    const d = this.dimensions;
    if (row !== last) {
      const movedId = this.#ids[last];
      this.#exact.copyWithin(row * d, last * d, (last + 1) * d);
      if (this.#compact) {
        this.#rows.copyWithin(row * d, last * d, (last + 1) * d);
        this.#rowScale[row] = this.#rowScale[last];
      }
      this.#ids[row] = movedId;
      this.#rowOf.set(movedId, row);
    }
    this.#ids.pop();
    this.#rowOf.delete(externalUserId);
    this.#exact.fill(0, last * d, (last + 1) * d);
    if (this.#compact) this.#rows.fill(0, last * d, (last + 1) * d);
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
    return this.top(probe, 2, excludeUserId);
  }

  /** The `k` best-scoring templates, best first, optionally ignoring one user. */
  top(probe: Float32Array, k: number, excludeUserId?: string): Match[] {
    const skip = excludeUserId === undefined ? -1 : (this.#rowOf.get(excludeUserId) ?? -1);
    const scores = this.#scoreAll(probe);
    const rows = bestRows(scores, this.#ids.length, this.#compact ? Math.max(k, RESCORED) : k, skip);
    const matches = rows.map((r) => ({ externalUserId: this.#ids[r], score: this.#compact ? dot(probe, this.#exact, r * this.dimensions) : scores[r] }));
    if (this.#compact) matches.sort((a, b) => b.score - a.score);
    return matches.slice(0, k);
  }

  /** Similarity of the probe to one user's template, or undefined when they have none here. */
  scoreOf(probe: Float32Array, externalUserId: string): number | undefined {
    const row = this.#rowOf.get(externalUserId);
    return row === undefined ? undefined : dot(probe, this.#exact, row * this.dimensions);
  }

  /** The probe's similarity to every row (approximate when compact), valid until the next scan. */
  #scoreAll(probe: Float32Array): Float32Array {
    const n = this.#ids.length;
    if (this.#scan && this.#compact) {
      const probeScale = quantize(probe, this.#probe as Int8Array, 0);
      this.#scan(0, ROWS_AT, n, this.#out.byteOffset);
      const out = this.#out as Int32Array;
      const approx = this.#approx;
      for (let r = 0; r < n; r++) approx[r] = out[r] * this.#rowScale[r] * probeScale;
      return approx;
    }
    const scores = this.#out as Float32Array;
    if (this.#scan) {
      (this.#probe as Float32Array).set(probe);
      this.#scan(0, ROWS_AT, n, scores.byteOffset);
    } else {
      for (let r = 0; r < n; r++) scores[r] = dot(probe, this.#exact, r * this.dimensions);
    }
    return scores;
  }

  /** Grows to `capacity` rows, keeping the rows already stored. */
  #reserve(capacity: number): void {
    const d = this.dimensions;
    if (this.#memory) {
      const rowBytes = this.#compact ? d : d * 4;
      const needed = ROWS_AT + capacity * rowBytes + capacity * 4;
      const pages = Math.ceil(needed / PAGE) - this.#memory.buffer.byteLength / PAGE;
      if (pages > 0) this.#memory.grow(pages);
      // the rows stay where they are; the views are re-made on the grown buffer
      const buffer = this.#memory.buffer;
      if (this.#compact) {
        this.#probe = new Int8Array(buffer, 0, d);
        this.#rows = new Int8Array(buffer, ROWS_AT, capacity * d);
        this.#out = new Int32Array(buffer, ROWS_AT + capacity * d, capacity);
        this.#exact = grown(this.#exact, capacity * d);
        this.#rowScale = grown(this.#rowScale, capacity);
        this.#approx = new Float32Array(capacity);
      } else {
        this.#probe = new Float32Array(buffer, 0, d);
        this.#exact = new Float32Array(buffer, ROWS_AT, capacity * d);
        this.#rows = this.#exact;
        this.#out = new Float32Array(buffer, ROWS_AT + capacity * d * 4, capacity);
      }
    } else {
      this.#exact = grown(this.#exact, capacity * d);
      this.#out = new Float32Array(capacity);
    }
    this.#capacity = capacity;
  }
}

function grown(a: Float32Array, length: number): Float32Array {
  const out = new Float32Array(length);
  out.set(a.subarray(0, Math.min(a.length, length)));
  return out;
}

/** Writes `v` as int8 at `offset` (symmetric, scaled by its largest magnitude); returns the scale back to float. */
function quantize(v: Float32Array, into: Int8Array, offset: number): number {
  let max = 0;
  for (let i = 0; i < v.length; i++) max = Math.max(max, Math.abs(v[i]));
  const scale = max > 0 ? max / 127 : 1;
  for (let i = 0; i < v.length; i++) into[offset + i] = Math.round(v[i] / scale);
  return scale;
}

/** The rows of the `k` highest scores, highest first, without `skip` (a partial insertion sort: k is small). */
function bestRows(scores: Float32Array, n: number, k: number, skip: number): number[] {
  const best: number[] = [];
  for (let r = 0; r < n; r++) {
    if (r === skip) continue;
    const s = scores[r];
    if (best.length === k && s <= scores[best[k - 1]]) continue;
    let i = best.length < k ? best.push(r) - 1 : k - 1;
    while (i > 0 && scores[best[i - 1]] < s) {
      best[i] = best[i - 1];
      i--;
    }
    best[i] = r;
  }
  return best;
}

/** Dot product of the probe with the row at `offset`; unrolled with four accumulators. */
function dot(p: Float32Array, m: Float32Array, offset: number): number {
  let a = 0;
  let b = 0;
  let c = 0;
  let d = 0;
  for (let i = 0; i < p.length; i += 4) {
    a += p[i] * m[offset + i];
    b += p[i + 1] * m[offset + i + 1];
    c += p[i + 2] * m[offset + i + 2];
    d += p[i + 3] * m[offset + i + 3];
  }
  return a + b + c + d;
}

/**
 * One tenant's people, each in the gallery of the model that decides them: the newest model they
 * hold a template of (matchers/index.ts, MATCHERS). A person enrolled before a new model came keeps
 * being decided by the old one until a capture gives them the new template (README, "Moving to a
 * new model"); then they move to the new model's gallery.
 */
export class TenantGallery {
  readonly #galleries = new Map<ModelId, Gallery>();
  readonly #modelOf = new Map<string, ModelId>();

  get size(): number {
    return this.#modelOf.size;
  }

  /** The people held, in no particular order. */
  ids(): string[] {
    return [...this.#modelOf.keys()];
  }

  /** The model that decides this person, if they are held. */
  modelOf(externalUserId: string): ModelId | undefined {
    return this.#modelOf.get(externalUserId);
  }

  /** The gallery of the people `model` decides (empty when it decides nobody). */
  gallery(model: ModelId): Gallery {
    let g = this.#galleries.get(model);
    if (!g) {
      g = new Gallery({ dimensions: matcher(model).dimensions });
      this.#galleries.set(model, g);
    }
    return g;
  }

  /** The models that decide somebody here, newest first. */
  models(): ModelId[] {
    return MATCHERS.map((m) => m.id).filter((id) => (this.#galleries.get(id)?.size ?? 0) > 0);
  }

  /** How many people each model decides. */
  counts(): Partial<Record<ModelId, number>> {
    return Object.fromEntries(this.models().map((id) => [id, this.gallery(id).size]));
  }

  /** Holds the person by the newest of their templates (none usable: they are not held). */
  upsert(externalUserId: string, templates: Embeddings): void {
    const model = MATCHERS.find((m) => templates[m.id] !== undefined)?.id;
    this.remove(externalUserId);
    if (!model) return;
    this.gallery(model).upsert(externalUserId, templates[model] as Float32Array);
    this.#modelOf.set(externalUserId, model);
  }

  remove(externalUserId: string): boolean {
    const model = this.#modelOf.get(externalUserId);
    if (!model) return false;
    this.#galleries.get(model)?.remove(externalUserId);
    this.#modelOf.delete(externalUserId);
    return true;
  }
}

/** The in-memory 1:N index of every tenant, loaded at start and kept current on each change. */
export class GalleryIndex {
  #tenants = new Map<string, TenantGallery>();

  of(tenantId: string): TenantGallery {
    let g = this.#tenants.get(tenantId);
    if (!g) {
      g = new TenantGallery();
      this.#tenants.set(tenantId, g);
    }
    return g;
  }

  /** People held, in every tenant. */
  get size(): number {
    let n = 0;
    for (const g of this.#tenants.values()) n += g.size;
    return n;
  }

  /** People per tenant, and how many of them each model decides. */
  sizes(): { tenantId: string; size: number; byModel: Partial<Record<ModelId, number>> }[] {
    return [...this.#tenants].map(([tenantId, g]) => ({ tenantId, size: g.size, byModel: g.counts() }));
  }
}
