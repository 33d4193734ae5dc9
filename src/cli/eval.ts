import { FaceAnalyzer } from '../biometrics/index.ts';
import { evaluateIdentify, evaluatePairs } from '../biometrics/evaluation.ts';
import { IdentifyPolicy } from '../biometrics/identify-policy.ts';
import { DEFAULT_QUALITY } from '../biometrics/quality.ts';
import type { Settings } from '../config/settings.ts';

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

export function evalPairsCommand(
  settings: Settings,
  opts: { csv: string; images: string; workers: number; progress: boolean },
): Promise<void> {
  return withAnalyzer(settings, opts.workers, async (analyzer) => {
    const figures = await evaluatePairs(analyzer, {
      csv: opts.csv,
      images: opts.images,
      concurrency: opts.workers,
      defaultThreshold: settings.AUTHFACE_MATCH_THRESHOLD,
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
  opts: { gallery: string; strangers?: string; exclude: string[]; workers: number },
): Promise<void> {
  const policy = new IdentifyPolicy({ targetFpir: settings.AUTHFACE_TARGET_FPIR, minThreshold: settings.AUTHFACE_MATCH_THRESHOLD, margin: settings.AUTHFACE_IDENTIFY_MARGIN });
  return withAnalyzer(settings, opts.workers, (analyzer) =>
    evaluateIdentify(analyzer, {
      gallery: opts.gallery,
      strangers: opts.strangers,
      exclude: opts.exclude,
      concurrency: opts.workers,
      rule: (size) => policy.rule(size),
    }),
  );
}
