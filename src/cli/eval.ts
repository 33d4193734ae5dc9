import { FaceAnalyzer } from '../biometrics/index.ts';
import { evaluateIdentify, evaluatePairs } from '../biometrics/evaluation.ts';
import { DEFAULT_QUALITY } from '../biometrics/quality.ts';
import type { Settings } from '../config/settings.ts';

function analyzerFor(settings: Settings, workers: number): FaceAnalyzer {
  return new FaceAnalyzer({
    backend: settings.AUTHFACE_BACKEND,
    maxPixels: settings.AUTHFACE_MAX_IMAGE_PIXELS,
    quality: DEFAULT_QUALITY,
    workers,
    queueSize: workers * 2,
  });
}

export async function evalPairsCommand(
  settings: Settings,
  opts: { csv: string; images: string; workers: number; progress: boolean },
): Promise<void> {
  const analyzer = analyzerFor(settings, opts.workers);
  try {
    await analyzer.ready();
    const figures = await evaluatePairs(analyzer, {
      csv: opts.csv,
      images: opts.images,
      concurrency: opts.workers,
      defaultThreshold: settings.AUTHFACE_MATCH_THRESHOLD,
      onProgress: opts.progress
        ? (done, total) => {
            if (done % 100 === 0 || done === total) process.stderr.write(`\r${done}/${total} images`);
          }
        : undefined,
    });
    if (opts.progress) process.stderr.write('\n');
    console.log(JSON.stringify(figures, null, 2));
  } finally {
    await analyzer.close();
  }
}

export async function evalIdentifyCommand(
  settings: Settings,
  opts: { gallery: string; exclude: string[]; workers: number },
): Promise<void> {
  const analyzer = analyzerFor(settings, opts.workers);
  try {
    await analyzer.ready();
    const figures = await evaluateIdentify(analyzer, {
      gallery: opts.gallery,
      exclude: opts.exclude,
      concurrency: opts.workers,
      threshold: settings.AUTHFACE_MATCH_THRESHOLD,
    });
    console.log(JSON.stringify(figures, null, 2));
  } finally {
    await analyzer.close();
  }
}
