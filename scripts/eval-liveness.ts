/**
 * `npm run eval:liveness`: the frame-level presentation-attack checks over ../shared/datasets/spoof
 * at the default thresholds. Attacks: print/ and replay/ frames; bona fide: live/ and the deepface
 * photos. Prints APCER (attacks accepted) and BPCER (bona fide refused) per check and combined, and
 * the active-mode result of every attack sample fed as a still to a full liveness session.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DEFAULT_ANALYZER_LIMITS, FaceAnalyzer } from '../src/biometrics/index.ts';
import { DEFAULT_QUALITY } from '../src/biometrics/quality.ts';
import type { FrameAnalysis } from '../src/biometrics/types.ts';
import { loadSettings } from '../src/config/settings.ts';
import { DEFAULT_ATTACK_LIMITS, attackSignals } from '../src/liveness/attack-signals.ts';
import { LivenessSession, defaultLivenessOptions, drawChallenge } from '../src/liveness/index.ts';
import { decisionThresholds, sameFaceLimits } from '../src/sessions/decisions.ts';

const root = path.resolve('..', 'shared', 'datasets');
if (!fs.existsSync(root)) {
  console.error(`eval:liveness needs ${root}`);
  process.exit(1);
}
const list = (dir: string, filter = /\.(jpe?g|png)$/i) => fs.readdirSync(path.join(root, dir)).filter((f) => filter.test(f)).sort().map((f) => path.join(root, dir, f));
const sets = {
  attack: [...list('spoof/print'), ...list('spoof/replay')],
  bonaFide: [...list('spoof/live'), ...list('deepface', /^img\d+\.jpg$/)],
};

const settings = loadSettings();
const analyzer = new FaceAnalyzer({ backend: 'auto', maxPixels: 25_000_000, quality: DEFAULT_QUALITY, ...DEFAULT_ANALYZER_LIMITS, workers: 2, queueSize: 8 });
await analyzer.ready();
const analyse = async (files: string[]) => {
  const out: { file: string; a: FrameAnalysis }[] = [];
  for (const file of files) out.push({ file, a: await analyzer.analyze(new Uint8Array(fs.readFileSync(file)), { mode: 'capture' }) });
  return out;
};
const attacks = await analyse(sets.attack);
const bona = await analyse(sets.bonaFide);

const checks = ['device_border', 'screen_pattern', 'passive_model'] as const;
const flagged = (a: FrameAnalysis, only?: string) => {
  if (!a.face) return false;
  const s = attackSignals(a.face, DEFAULT_ATTACK_LIMITS);
  return only ? s.includes(only as (typeof checks)[number]) : s.length > 0;
};
const rate = (n: number, d: number) => `${n}/${d} = ${((100 * n) / Math.max(1, d)).toFixed(1)} %`;
const withFace = (rows: typeof attacks) => rows.filter((r) => r.a.face);

console.log(`thresholds: ${JSON.stringify(DEFAULT_ATTACK_LIMITS)}`);
console.log(`attack samples: ${attacks.length} (${withFace(attacks).length} with a face found), bona fide: ${bona.length} (${withFace(bona).length} with a face)`);
const table: Record<string, { APCER: string; BPCER: string }> = {};
for (const check of [...checks, undefined]) {
  const a = withFace(attacks);
  table[check ?? 'all checks (passive mode)'] = {
    APCER: rate(a.filter((r) => !flagged(r.a, check)).length, a.length),
    BPCER: rate(bona.filter((r) => !r.a.face || flagged(r.a, check)).length, bona.length),
  };
}
console.table(table);
console.log('attack frames accepted in passive mode:', withFace(attacks).filter((r) => !flagged(r.a)).map((r) => path.basename(r.file)).join(' '));
console.log('bona fide refused:', bona.filter((r) => !r.a.face || flagged(r.a)).map((r) => path.basename(r.file)).join(' ') || 'none');

// active mode: every attack sample, fed ten times as a still, to a full liveness session
let passedActive = 0;
for (const { a } of attacks) {
  const challenge = drawChallenge();
  const session = new LivenessSession('active', challenge, defaultLivenessOptions(sameFaceLimits(decisionThresholds(settings.AUTHFACE_TARGET_FPIR, { match: settings.AUTHFACE_MATCH_THRESHOLD, duplicate: settings.AUTHFACE_DUPLICATE_THRESHOLD, margin: settings.AUTHFACE_IDENTIFY_MARGIN }))));
  for (let i = 0; i < 10; i++) session.observe(a, { at: i * 300, lightPhase: i % challenge.colors.length });
  if (session.verdict(a.face ? 10 : 0) === null) passedActive++;
}
console.log(`active mode (each attack sample as a still session): ${rate(passedActive, attacks.length)} passed`);
await analyzer.close();
