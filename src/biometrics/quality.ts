import type { FaceObservation, QualityLimits, QualityProblem } from './types.ts';

/**
 * Defaults measured on the shared photo sets (capture mode): every deepface and bbt face passes
 * (sharpness ≥ 0.021, brightness 74–190, faces ≥ 136 px, |yaw| ≤ 27°, |pitch| ≤ 18°); of 600 LFW
 * photos, which are small and soft, about 0.5 % fall under the sharpness floor. Sharpness is
 * measured on the 150 px aligned chip, i.e. at the resolution the descriptor sees.
 */
export const DEFAULT_QUALITY: QualityLimits = {
  minFaceSize: 60,
  maxYaw: 30,
  maxPitch: 30,
  minSharpness: 0.006,
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
