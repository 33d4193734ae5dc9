import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SHARED_DATASETS = path.resolve(ROOT, '..', 'shared', 'datasets');

/**
 * Whether ../shared/datasets can be used. AUTHFACE_TEST_WITHOUT_SHARED=1 simulates a fresh clone
 * without it (the functional tests then use photos from npm packages).
 */
export const hasShared = fs.existsSync(SHARED_DATASETS) && process.env.AUTHFACE_TEST_WITHOUT_SHARED !== '1';

export function shared(...parts: string[]): string {
  return path.join(SHARED_DATASETS, ...parts);
}

/** Skips a suite that needs ../shared/datasets, saying why (CI always has it; .ci/run checks). */
export function requireShared(suite: Mocha.Suite): void {
  suite.beforeAll(function () {
    if (!hasShared) {
      console.log(`      skipped: ${SHARED_DATASETS} is not present (accuracy and dataset tests need it)`);
      this.skip();
    }
  });
}
