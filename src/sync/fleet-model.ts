import { DLIB_RESNET, type ModelId } from '../biometrics/matchers/index.ts';

/**
 * The model whose templates the fleet replicates. A change of the log carries one template, of at
 * most 128 floats, and doors of the previous release refuse anything else, so for now it stays the
 * first model's. A door makes the newer model's template of each person from its own captures
 * (README, "Moving to a new model"), and keeps it when the person comes back through the log.
 */
export const FLEET_MODEL: ModelId = DLIB_RESNET.id;
