/** Embeddings are 128-D dlib ResNet descriptors, L2-normalised, so similarity is a dot product. */
export const EMBEDDING_DIM = 128;

/**
 * The embedding space this engine produces: dlib's ResNet descriptor of a chip aligned the
 * authface way. Templates are sealed with it; change it when a new model or alignment makes
 * old templates incomparable, and stored templates of the old one are flagged for re-enrolment.
 */
export const EMBEDDING_MODEL = 'dlib-resnet-v1/authface-align-1';

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
