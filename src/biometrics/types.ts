import type { Artefacts } from './artefacts.ts';
import type { Embeddings, ModelId } from './matchers/types.ts';

/** What the face engine reports about one image. Plain data: it crosses a worker boundary. */

export interface Box {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** Reasons a frame cannot be used for matching, named so a capture UI can guide the person. */
export type QualityProblem =
  | 'no_face'
  | 'multiple_faces'
  | 'face_too_small'
  | 'face_not_frontal'
  | 'too_blurry'
  | 'too_dark'
  | 'too_bright';

export interface Pose {
  /**
   * Degrees, in the person's terms on an unmirrored camera image: positive yaw = turned to their
   * left (nose towards image right), positive pitch = looking up.
   */
  yaw: number;
  pitch: number;
  roll: number;
}

export interface FaceObservation {
  box: Box;
  /** Detector confidence 0..1. */
  confidence: number;
  pose: Pose;
  /** Eye openness 0 (closed) .. ~0.35 (wide open): eyelid gap over eye width, per eye. */
  eyeOpenness: { left: number; right: number };
  /** Variance of the Laplacian over the grey variance of the aligned face (contrast-free); low values mean blur. */
  sharpness: number;
  /** Mean grey level 0..255 of the aligned chip. */
  brightness: number;
  /** Mean RGB 0..255 of the face's skin region (cheeks and forehead) on the aligned chip. */
  faceColor: [number, number, number];
  /** Passive presentation-attack model scores from @vladmandic/human (0..1, higher = more genuine). */
  antispoof: number;
  liveness: number;
  /**
   * The face anti-spoofing network's probability that the face is live (presentation-attack.ts);
   * capture mode only (null otherwise). Kept in memory with the frame, like every other signal.
   */
  liveScore: number | null;
  /** Screen and print evidence in the frame (see artefacts.ts); capture mode only. */
  artefacts: Artefacts;
}

export interface FrameAnalysis {
  width: number;
  height: number;
  /** Every face found. */
  faceCount: number;
  /** Boxes of every face found, in image pixels (after EXIF rotation and any downscaling). */
  boxes: Box[];
  /** The face the frame is about (largest), if any. */
  face: FaceObservation | null;
  /** Unit-length embeddings of `face`, one per model asked for; empty without a face. */
  embeddings: Embeddings;
  /** Empty when the frame is usable for matching. */
  problems: QualityProblem[];
  millis: number;
}

export interface QualityLimits {
  minFaceSize: number;
  maxYaw: number;
  maxPitch: number;
  minSharpness: number;
  minBrightness: number;
  maxBrightness: number;
}

export interface AnalyzeOptions {
  /**
   * `capture`: a person in front of a camera; the largest face is the subject and any other
   * face of comparable size makes the frame unusable. `photo`: evaluation images (LFW and the
   * like) where the subject is the face nearest the centre and bystanders are ignored.
   */
  mode: 'capture' | 'photo';
  /** The models to describe the face with (default: the primary model only). */
  models?: readonly ModelId[];
}
