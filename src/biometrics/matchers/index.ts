import { IMPOSTOR_TAILS } from './impostor-tails.ts';
import type { Embeddings, Matcher, ModelId } from './types.ts';

export type { Embeddings, Matcher, ModelId } from './types.ts';

/** dlib's ResNet-34 (128-D): the first model; people enrolled before the move to MobileFaceNet have only its template. */
export const DLIB_RESNET: Matcher = {
  id: 'dlib-resnet-v1/authface-align-1',
  name: 'dlib ResNet-34',
  dimensions: 128,
  matchThreshold: 0.93,
  duplicateThreshold: 0.92,
  identifyMargin: 0.01,
  sameFaceTurned: 0.85,
  impostorTail: IMPOSTOR_TAILS['dlib-resnet-v1/authface-align-1'],
};

/**
 * MobileFaceNet (512-D, from faceplugin-face-recognition-js): the model every new template is made
 * with. `arcface5-2`: its input in BGR, the order it was trained in. `-1` fed RGB, as the package's
 * JavaScript does; its templates are not this model's: a person who also holds dlib's is decided
 * by dlib and migrates again at their next capture, one who holds only `-1`'s is flagged
 * `model_changed` (re-enrol).
 */
export const MOBILEFACENET: Matcher = {
  id: 'mobilefacenet-512/arcface5-2',
  name: 'MobileFaceNet',
  dimensions: 512,
  matchThreshold: 0.46,
  duplicateThreshold: 0.417,
  identifyMargin: 0.02,
  sameFaceTurned: 0.03,
  impostorTail: IMPOSTOR_TAILS['mobilefacenet-512/arcface5-2'],
};

/** Every model, newest first: a person is decided by the first of these they hold a template of. */
export const MATCHERS: readonly Matcher[] = [MOBILEFACENET, DLIB_RESNET];

/** The model of new templates, and of the score a decision reports once a person holds its template. */
export const PRIMARY_MODEL: ModelId = MOBILEFACENET.id;

export function matcher(id: ModelId): Matcher {
  return MATCHERS.find((m) => m.id === id) as Matcher;
}

/** The embedding of the newest model present, with its model (a frame's or a probe's). */
export function newest(embeddings: Embeddings): { model: ModelId; embedding: Float32Array } | undefined {
  const m = MATCHERS.find((x) => embeddings[x.id] !== undefined);
  return m && { model: m.id, embedding: embeddings[m.id] as Float32Array };
}

/** A model id read from outside (a database row, a sync message, the command line). */
export function isModelId(id: string): id is ModelId {
  return MATCHERS.some((m) => m.id === id);
}

/** "812 of 1,000 people have the MobileFaceNet template (188 still decided by dlib)", for doctor and the console. */
export function migrationProgress(c: { people: number; byModel: Partial<Record<ModelId, number>> }): string {
  const fresh = c.byModel[PRIMARY_MODEL] ?? 0;
  const text = `${fresh.toLocaleString('en')} of ${c.people.toLocaleString('en')} people have the ${matcher(PRIMARY_MODEL).name} template`;
  return fresh < c.people ? `${text} (${(c.people - fresh).toLocaleString('en')} still decided by an older model)` : text;
}
