/** Embeddings are L2-normalised (each model's, matchers/), so similarity is a dot product. */

export function normalize(v: Float32Array): Float32Array {
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += v[i] * v[i];
  const inv = sum > 0 ? 1 / Math.sqrt(sum) : 0;
  const out = new Float32Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = v[i] * inv;
  return out;
}

/** Cosine similarity of two unit vectors. */
export function similarity(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** The normalised mean of several unit embeddings (a template from several frames). */
export function meanEmbedding(list: readonly Float32Array[]): Float32Array {
  if (list.length === 0) throw new Error('no embeddings to average');
  const sum = new Float32Array(list[0].length);
  for (const e of list) for (let i = 0; i < sum.length; i++) sum[i] += e[i];
  return normalize(sum);
}
