import { CHIP_SIZE, mirrorChip } from '../alignment.ts';
import { normalize } from '../embedding.ts';
import type { ModelFiles } from '../models.ts';
import { type Runtime, loadFaceApiNet } from '../runtime.ts';
import type { AlignedFace, Describer } from './describer.ts';

/**
 * dlib's ResNet-34 descriptor (128-D, face-api's port) of the dlib-style 150 px chip
 * (alignment.ts): the descriptors of the chip and of its mirror image averaged and
 * normalised. Its weights are read only when a tenant still needs it.
 */
export function dlibDescriber(rt: Runtime, models: ModelFiles): Describer {
  const { tf, faceapi } = rt;
  loadFaceApiNet(tf, models, faceapi.nets.faceRecognitionNet, 'face-api/face_recognition_model-weights_manifest.json');
  return {
    async describe(face: AlignedFace): Promise<Float32Array> {
      const chip150 = await face.chip150('detector');
      const inputs = [chip150, mirrorChip(chip150)].map((c) => tf.tensor3d(c, [CHIP_SIZE, CHIP_SIZE, 3], 'float32'));
      try {
        const out = await faceapi.nets.faceRecognitionNet.computeFaceDescriptor(inputs);
        const [d1, d2] = out as Float32Array[];
        const sum = new Float32Array(d1.length);
        for (let i = 0; i < sum.length; i++) sum[i] = d1[i] + d2[i];
        return normalize(sum);
      } finally {
        for (const t of inputs) t.dispose();
      }
    },
  };
}
