import assert from 'node:assert/strict';
import { type IdentifyFigures, type PairFigures, evaluateIdentify, evaluatePairs } from '../src/biometrics/evaluation.ts';
import { loadSettings } from '../src/config/settings.ts';
import { requireShared, shared } from './support/datasets.ts';
import { sharedAnalyzer } from './support/service.ts';

/**
 * Accuracy on the deepface pair lists and on bbt (the full LFW run takes minutes: it belongs to
 * `npm run eval:lfw` and the README, not to npm test). Targets from the product's first issue.
 */
describe('accuracy on real photos (../shared/datasets)', function () {
  requireShared(this);
  const { AUTHFACE_MATCH_THRESHOLD: threshold } = loadSettings({});

  const pairs = async (csv: string): Promise<PairFigures> =>
    evaluatePairs(await sharedAnalyzer(), { csv: shared('deepface', csv), images: shared('deepface'), concurrency: 2, defaultThreshold: threshold });

  for (const csv of ['master.csv', 'face-recognition-pivot.csv']) {
    it(`deepface ${csv}: AUC ≥ 0.999 and TAR ≥ 0.97 where no impostor is accepted`, async function () {
      const f = await pairs(csv);
      console.log(`      ${JSON.stringify({ auc: f.auc, tar_at_far_0: f.tar_at_far_0, at_default: f.at_default_threshold, failed: f.failed_to_detect })}`);
      assert.equal(f.failed_to_detect, 0);
      assert.ok((f.auc as number) >= 0.999);
      assert.ok((f.tar_at_far_0 as number) >= 0.97);
      assert.equal(f.at_default_threshold.far, 0, 'no impostor accepted at the default threshold');
    });
  }

  it('bbt: enroll crop 1, identify crops 2–5: rank-1 ≥ 0.97, no wrong identity accepted', async function () {
    const f: IdentifyFigures = await evaluateIdentify(await sharedAnalyzer(), { gallery: shared('bbt'), exclude: ['group'], concurrency: 2, threshold });
    console.log(`      ${JSON.stringify(f)}`);
    assert.equal(f.people, 8);
    assert.equal(f.probes, 32);
    assert.equal(f.failed_to_detect, 0);
    assert.ok((f.rank1 as number) >= 0.97);
    assert.equal(f.false_identifications, 0);
  });
});
