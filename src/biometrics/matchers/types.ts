import type { ImpostorTail } from '../identification.ts';

/**
 * The embedding models the service knows, by the id their templates are sealed with. An id names a
 * model *and* the alignment it is fed with: change it when either changes, because templates of
 * the old id are not comparable with the new ones.
 */
export type ModelId = 'dlib-resnet-v1/authface-align-1' | 'mobilefacenet-512/arcface5-2';

/** One embedding per model (unit vectors), for one face: a probe or a person's templates. */
export type Embeddings = Partial<Record<ModelId, Float32Array>>;

/**
 * What the service knows of a model outside the face engine: its size and its score scale. Every
 * threshold is on the model's own scale (the cosine similarity of its unit vectors): a score of
 * one model means nothing to another. Measured on LFW and the deepface sets (README, "The face
 * engine and its accuracy"); `npm run eval:lfw` and `npm run eval:identify` reproduce them.
 */
export interface Matcher {
  id: ModelId;
  /** For people: doctor, the console. */
  name: string;
  dimensions: number;
  /** verify (1:1) accepts at or above this, and identify never goes below it. */
  matchThreshold: number;
  /** enroll and update_embedding report `conflict` at or above this similarity to another person. */
  duplicateThreshold: number;
  /**
   * Frames of one capture must show the same face: a frontal frame must score the match threshold
   * against the capture's first frontal face, a turned one (a head-movement challenge) this.
   */
  sameFaceTurned: number;
  /** identify refuses (`ambiguous_match`) when the best two people score within this of each other. */
  identifyMargin: number;
  /** The fitted upper tail of its impostor scores on LFW: identify's threshold follows it (identify-policy.ts). */
  impostorTail: ImpostorTail;
}
