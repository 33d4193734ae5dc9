import type { Point, RgbImage } from '../alignment.ts';

/**
 * How the landmark net is framed on the face: on the detector's box (`detector`: dlib's, as its
 * templates were made) or on the face mesh's box (`mesh`: MobileFaceNet's).
 */
export type Framing = 'detector' | 'mesh';

/** A face as the engine hands it to each model: computed on demand, once per frame and framing. */
export interface AlignedFace {
  image: RgbImage;
  /** The averaged 68 landmarks in image pixels (engine.ts). */
  landmarks(framing: Framing): Promise<readonly Point[]>;
  /** The 150 px dlib-aligned chip of those landmarks (also what the quality statistics read). */
  chip150(framing: Framing): Promise<Float32Array>;
}

/** The face engine's side of a model (in a worker thread): one unit-length embedding of a face. */
export interface Describer {
  describe(face: AlignedFace): Promise<Float32Array>;
}
