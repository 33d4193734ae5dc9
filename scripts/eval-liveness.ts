/**
 * `npm run eval:liveness`: the presentation-attack checks over ../shared/datasets/spoof at the
 * default thresholds, in ISO/IEC 30107-3 terms. Attacks: print/ and replay/ frames; bona fide:
 * live/ and the deepface photos; a stress set of 200 LFW press photos. Prints APCER (attacks
 * accepted, per type) and BPCER (bona fide refused) of each frame check and combined; the anti-
 * spoofing network's floor that keeps BPCER ≤ 5 %, and at the default floor the session results
 * (each replay's frames as one session, each print and each bona fide photo as a session of
 * three frames); and the active-mode result of every attack sample fed as a still to a session.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DEFAULT_ANALYZER_LIMITS, FaceAnalyzer } from '../src/biometrics/index.ts';
import { DEFAULT_QUALITY } from '../src/biometrics/quality.ts';
import type { FrameAnalysis } from '../src/biometrics/types.ts';
import { loadSettings } from '../src/config/settings.ts';
import { DEFAULT_ATTACK_LIMITS, attackSignals } from '../src/liveness/attack-signals.ts';
import { DEFAULT_PAD_THRESHOLD, LivenessSession, defaultLivenessOptions, drawChallenge } from '../src/liveness/index.ts';
import { decisionThresholds, sameFaceLimits } from '../src/sessions/decisions.ts';
import { cameraFrame, hasFfmpeg } from '../test/support/browser.ts';

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
// every 7th person of LFW's folder list, their first photo: 200 press photos of 200 people
const lfwDir = path.join(root, 'lfw', 'images');
const lfwStress = fs.readdirSync(lfwDir).sort().filter((_, i) => i % 7 === 0).slice(0, 200).map((n) => path.join(lfwDir, n, fs.readdirSync(path.join(lfwDir, n)).sort()[0]));

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
const lfw = await analyse(lfwStress);

const livenessOptions = defaultLivenessOptions(sameFaceLimits(decisionThresholds(settings.AUTHFACE_TARGET_FPIR, { match: settings.AUTHFACE_MATCH_THRESHOLD, duplicate: settings.AUTHFACE_DUPLICATE_THRESHOLD, margin: settings.AUTHFACE_IDENTIFY_MARGIN })));
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

// the anti-spoofing network (presentation-attack.ts), frame by frame and per session
const live = (r: { a: FrameAnalysis }) => r.a.face?.liveScore ?? 0;
const kind = (file: string) => (file.includes(`${path.sep}print${path.sep}`) ? 'print' : 'replay');
const attackFaces = withFace(attacks);
const bonaFaces = withFace(bona);
let auc = 0;
for (const a of attackFaces) for (const b of bonaFaces) auc += live(b) > live(a) ? 1 : live(b) === live(a) ? 0.5 : 0;
auc /= attackFaces.length * bonaFaces.length;
const bonaSorted = bonaFaces.map(live).sort((x, y) => x - y);
const fivePercentFloor = bonaSorted[Math.floor(0.05 * bonaFaces.length)];
console.log(`\nanti-spoofing network: AUC ${auc.toFixed(3)} (${attackFaces.length} attack frames, ${bonaFaces.length} bona fide photos with a face)`);
console.log(`the highest floor refusing at most 5 % of the bona fide photos: ${fivePercentFloor.toFixed(3)}; the default: ${DEFAULT_PAD_THRESHOLD}`);
const t = DEFAULT_PAD_THRESHOLD;
const padTable: Record<string, string> = {};
for (const type of ['print', 'replay'] as const) {
  const rows = attackFaces.filter((r) => kind(r.file) === type);
  padTable[`APCER ${type}`] = rate(rows.filter((r) => live(r) >= t).length, rows.length);
}
padTable['APCER all'] = rate(attackFaces.filter((r) => live(r) >= t).length, attackFaces.length);
padTable['BPCER (live + deepface)'] = rate(bona.filter((r) => !r.a.face || live(r) < t).length, bona.length);
padTable['BPCER, 200 LFW press photos (stress)'] = rate(lfw.filter((r) => !r.a.face || live(r) < t).length, lfw.length);
padTable['passive mode, every frame check: APCER'] = rate(attackFaces.filter((r) => !flagged(r.a) && live(r) >= t).length, attackFaces.length);
padTable['passive mode, every frame check: BPCER'] = rate(bona.filter((r) => !r.a.face || flagged(r.a) || live(r) < t).length, bona.length);
console.table(padTable);
console.log('attack frames the network accepts:', attackFaces.filter((r) => live(r) >= t).map((r) => `${path.basename(r.file)} ${live(r).toFixed(3)}`).join(', ') || 'none');
console.log('bona fide photos it refuses:', bonaFaces.filter((r) => live(r) < t).map((r) => `${path.basename(r.file)} ${live(r).toFixed(3)}`).join(', ') || 'none');

/** A passive session of these frames (each observed as a capture would): its verdict. */
const passiveSession = (frames: FrameAnalysis[]) => {
  const session = new LivenessSession('passive', null, livenessOptions);
  let accepted = 0;
  frames.forEach((a, i) => {
    if (a.face && session.observe(a, { at: i * 300 }).length === 0) accepted++;
  });
  return session.verdict(accepted);
};
const replays = [...new Set(attackFaces.filter((r) => kind(r.file) === 'replay').map((r) => path.basename(r.file).split('_')[0]))];
const attackSessions = [
  ...replays.map((name) => ({ name, frames: attackFaces.filter((r) => path.basename(r.file).startsWith(`${name}_`)).map((r) => r.a) })),
  ...attackFaces.filter((r) => kind(r.file) === 'print').map((r) => ({ name: path.basename(r.file), frames: [r.a, r.a, r.a] })),
];
const passedAttacks = attackSessions.filter((s) => passiveSession(s.frames) === null);
console.log(`passive sessions of attack frames (each replay's frames, each print thrice): ${passedAttacks.length} of ${attackSessions.length} pass${passedAttacks.length ? ` (${passedAttacks.map((s) => s.name).join(', ')})` : ''}`);
const bonaSessions = bonaFaces.filter((r) => r.file.includes(`${path.sep}deepface${path.sep}`));
const refusedBona = bonaSessions.filter((r) => passiveSession([r.a, r.a, r.a]) !== null);
console.log(`passive sessions of a deepface photo thrice: ${rate(refusedBona.length, bonaSessions.length)} refused (BPCER, session level)${refusedBona.length ? `: ${refusedBona.map((r) => path.basename(r.file)).join(', ')}` : ''}`);

// active mode: every attack sample, fed ten times as a still, to a full liveness session
let passedActive = 0;
for (const { a } of attacks) {
  const challenge = drawChallenge();
  const session = new LivenessSession('active', challenge, livenessOptions);
  for (let i = 0; i < 10; i++) session.observe(a, { at: i * 300, lightPhase: i % challenge.colors.length });
  if (session.verdict(a.face ? 10 : 0) === null) passedActive++;
}
console.log(`active mode (each attack sample as a still session): ${rate(passedActive, attacks.length)} passed`);

// as the browser tests' fake webcam shows them (test/support/browser.ts): the replay clip filled into
// 640×480, every frame, and the deepface photos as 640×480 camera frames. The capture page sends
// only frames its guide finds usable (frontal, face 0.2–0.68 of the width, centred), so the clip's
// frames are split into those and the rest
if (hasFfmpeg) {
  const mjpeg = execFileSync('ffmpeg', ['-loglevel', 'error', '-i', path.join(root, 'spoof/replay/replay1_clip.mp4'), '-vf', 'scale=640:480:force_original_aspect_ratio=increase,crop=640:480', '-q:v', '3', '-f', 'mjpeg', '-'], { maxBuffer: 1 << 28 });
  const clip = [];
  for (const frame of jpegFrames(mjpeg)) clip.push(await analyzer.analyze(frame, { mode: 'capture' }));
  const guideSends = (a: FrameAnalysis) => {
    const f = a.face;
    if (!f || a.problems.length > 0) return false;
    const width = f.box.width / 640;
    const cx = (f.box.x + f.box.width / 2) / 640;
    return width >= 0.2 && width <= 0.68 && Math.abs(cx - 0.5) <= 0.2 && Math.abs(f.pose.yaw) <= 15 && Math.abs(f.pose.pitch) <= 15;
  };
  const sent = clip.filter(guideSends);
  const rest = clip.filter((a) => a.face && !guideSends(a));
  const score = (a: FrameAnalysis) => a.face?.liveScore ?? 0;
  const webcam: Record<string, string> = {};
  webcam['replay1_clip, frames the guide sends: accepted (APCER)'] = rate(sent.filter((a) => score(a) >= t).length, sent.length);
  webcam['replay1_clip, its other frames with a face: accepted'] = rate(rest.filter((a) => score(a) >= t).length, rest.length);
  const frames = [];
  for (const r of bonaSessions) frames.push(await analyzer.analyze(new Uint8Array(await cameraFrame(fs.readFileSync(r.file))), { mode: 'capture' }));
  webcam['deepface photos as 640×480 camera frames: refused (BPCER)'] = rate(frames.filter((a) => !a.face || score(a) < t).length, frames.length);
  console.log(`\nas the fake webcam shows them, at the floor ${t}:`);
  console.table(webcam);
  const q = (xs: number[], p: number) => xs.sort((x, y) => x - y)[Math.min(xs.length - 1, Math.floor(p * xs.length))]?.toFixed(3);
  console.log(`replay1_clip frames the guide sends score min ${q(sent.map(score), 0)}, median ${q(sent.map(score), 0.5)}, max ${q(sent.map(score), 1)}`);
} else {
  console.log('\n(ffmpeg not found: the fake-webcam figures are skipped)');
}
await analyzer.close();

/** The JPEG images of an MJPEG stream, each from its start marker to its end marker. */
function jpegFrames(stream: Buffer): Uint8Array[] {
  const out: Uint8Array[] = [];
  let start = -1;
  for (let i = 0; i < stream.length - 1; i++) {
    if (stream[i] !== 0xff) continue;
    if (stream[i + 1] === 0xd8 && start < 0) start = i;
    else if (stream[i + 1] === 0xd9 && start >= 0) {
      out.push(new Uint8Array(stream.subarray(start, i + 2)));
      start = -1;
    }
  }
  return out;
}
