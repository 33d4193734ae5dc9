import { DLIB_RESNET, type ModelId } from '../biometrics/matchers/index.ts';

/**
 * The model of every change's first template: the one the hub checks duplicates with, and the only
 * one a door of the previous release takes (its schema holds at most 128 floats and nothing else).
 * The newer model's template travels beside it, in the upsert's `templates`, which the hub leaves
 * out for those doors (README, "Moving to a new model", in a fleet).
 */
export const FLEET_MODEL: ModelId = DLIB_RESNET.id;
