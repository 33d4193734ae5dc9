import type { Point, RgbImage } from '../alignment.ts';

/** A face as the engine hands it to each model: the frame, its 68 landmarks, and dlib's chip of it. */
export interface AlignedFace {
  image: RgbImage;
  /** The averaged 68 landmarks, in image pixels (engine.ts). */
  landmarks68: readonly Point[];
  /** The 150 px dlib-aligned chip the engine cuts anyway for its quality statistics. */
  chip150: Float32Array;
}

/** The face engine's side of a model (in a worker thread): one unit-length embedding of a face. */
export interface Describer {
  describe(face: AlignedFace): Promise<Float32Array>;
}
