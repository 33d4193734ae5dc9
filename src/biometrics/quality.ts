import type { FaceObservation, QualityLimits, QualityProblem } from './types.ts';

/**
 * Defaults chosen on the shared photo sets: every bona fide deepface, bbt and LFW face passes;
 * the limits still refuse faces too small, turned or blurred for a reliable embedding.
 */
export const DEFAULT_QUALITY: QualityLimits = {
  minFaceSize: 60,
  maxYaw: 30,
  maxPitch: 30,
  minSharpness: 20,
  minBrightness: 40,
  maxBrightness: 225,
};

/** The problems that make this face unusable for matching (empty = usable). */
export function qualityProblems(face: FaceObservation, limits: QualityLimits): QualityProblem[] {
  const problems: QualityProblem[] = [];
  if (Math.max(face.box.width, face.box.height) < limits.minFaceSize) problems.push('face_too_small');
  if (Math.abs(face.pose.yaw) > limits.maxYaw || Math.abs(face.pose.pitch) > limits.maxPitch) {
    problems.push('face_not_frontal');
  }
  if (face.sharpness < limits.minSharpness) problems.push('too_blurry');
  if (face.brightness < limits.minBrightness) problems.push('too_dark');
  if (face.brightness > limits.maxBrightness) problems.push('too_bright');
  return problems;
}
