import { FaceAnalyzer } from '../biometrics/index.ts';
import { evaluateIdentify, evaluatePairs } from '../biometrics/evaluation.ts';
import { type ModelId, MATCHERS, PRIMARY_MODEL, isModelId } from '../biometrics/matchers/index.ts';
import { DEFAULT_QUALITY } from '../biometrics/quality.ts';
import type { Settings } from '../config/settings.ts';
import { OperatorError } from '../errors.ts';
import { decisionThresholds } from '../sessions/decisions.ts';

/** Starts `workers` engine threads, runs the evaluation, prints its figures as JSON, stops them. */
async function withAnalyzer(settings: Settings, workers: number, run: (analyzer: FaceAnalyzer) => Promise<unknown>): Promise<void> {
  const analyzer = new FaceAnalyzer({
    backend: settings.AUTHFACE_BACKEND,
    maxPixels: settings.AUTHFACE_MAX_IMAGE_PIXELS,
    // evaluation sets hold photos of every shape and size, and the run waits for each of them
    maxSide: 16_384,
    maxAspectRatio: 10,
    frameTimeoutMs: 120_000,
    quality: DEFAULT_QUALITY,
    workers,
    queueSize: workers * 2,
  });
  try {
    await analyzer.ready();
    console.log(JSON.stringify(await run(analyzer), null, 2));
  } finally {
    await analyzer.close();
  }
}

/** `--model`: a model id, or `all` (every model, newest first). */
export function evalModels(model: string): ModelId[] {
  if (model === 'all') return MATCHERS.map((m) => m.id);
  if (!isModelId(model)) throw new OperatorError(`--model must be all or one of ${MATCHERS.map((m) => m.id).join(', ')}`);
  return [model];
}

export function evalPairsCommand(
  settings: Settings,
  opts: { csv: string; images: string; workers: number; progress: boolean; model: string },
): Promise<void> {
  return withAnalyzer(settings, opts.workers, async (analyzer) => {
    const figures = await evaluatePairs(analyzer, {
      csv: opts.csv,
      images: opts.images,
      concurrency: opts.workers,
      models: evalModels(opts.model),
      // the settings' threshold is the primary model's; an older model is judged at its own
      thresholds: { [PRIMARY_MODEL]: settings.AUTHFACE_MATCH_THRESHOLD },
      onProgress: opts.progress
        ? (done, total) => {
            if (done % 100 === 0 || done === total) process.stderr.write(`\r${done}/${total} images${done === total ? '\n' : ''}`);
          }
        : undefined,
    });
    return figures;
  });
}

export function evalIdentifyCommand(
  settings: Settings,
  opts: { gallery: string; strangers?: string; exclude: string[]; workers: number; model: string },
): Promise<void> {
  const models = evalModels(opts.model);
  const thresholds = decisionThresholds(settings.AUTHFACE_TARGET_FPIR, { match: settings.AUTHFACE_MATCH_THRESHOLD, duplicate: settings.AUTHFACE_DUPLICATE_THRESHOLD, margin: settings.AUTHFACE_IDENTIFY_MARGIN });
  return withAnalyzer(settings, opts.workers, async (analyzer) => {
    const out: Partial<Record<ModelId, unknown>> = {};
    for (const model of models) {
      out[model] = await evaluateIdentify(analyzer, {
        gallery: opts.gallery,
        strangers: opts.strangers,
        exclude: opts.exclude,
        concurrency: opts.workers,
        model,
        rule: (size) => thresholds[model].identify.rule(size),
      });
    }
    return out;
  });
}
