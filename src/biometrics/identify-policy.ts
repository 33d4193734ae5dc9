import { type ImpostorTail, type Rule, modelledFpir, modelledThreshold } from './identification.ts';
import { PRIMARY_MODEL, matcher } from './matchers/index.ts';

export interface IdentifyPolicyOptions {
  /** The share of strangers the service may identify as somebody, whatever the gallery's size. */
  targetFpir: number;
  /** The threshold never goes below this (the 1:1 verify threshold): a small gallery is no easier than one comparison. */
  minThreshold: number;
  /** Refuse when the best and the second-best person score within this of each other (0 = off). */
  margin: number;
}

/**
 * The identification rule for a gallery of a given size. A stranger is compared with every
 * template, so the chance that one of them passes grows with the gallery: FPIR(N) = 1 − (1 − FAR)^N.
 * The threshold is set where the modelled FPIR of a gallery this size is the target, using the
 * model's impostor tail measured on LFW (`npm run eval:identify`, README "1:N and strangers"); the
 * primary model's by default.
 */
export class IdentifyPolicy {
  constructor(
    readonly options: IdentifyPolicyOptions,
    private readonly tail: ImpostorTail = matcher(PRIMARY_MODEL).impostorTail,
  ) {}

  rule(gallerySize: number): Rule {
    const curve = modelledThreshold(this.tail, this.options.targetFpir, gallerySize);
    return { threshold: Math.max(this.options.minThreshold, curve), margin: this.options.margin };
  }

  /** The FPIR the rule in force gives at this gallery size (modelled; the margin only lowers it). */
  expectedFpir(gallerySize: number): number {
    return gallerySize === 0 ? 0 : modelledFpir(this.tail, this.rule(gallerySize).threshold, gallerySize);
  }
}
