import assert from 'node:assert/strict';
import sharp from 'sharp';
import { normalize } from '../src/biometrics/embedding.ts';
import { DLIB_RESNET, MOBILEFACENET } from '../src/biometrics/matchers/index.ts';
import { type Challenge, drawChallenge, parseHex, STEPS } from '../src/liveness/challenge.ts';
import { DEFAULT_MOVEMENT_LIMITS, HeadMovementCheck, type MovementFrame, type MovementLimits } from '../src/liveness/head-movement.ts';
import { type LightFrame, verifyScreenLight } from '../src/liveness/screen-light.ts';
import { type Photos, photos } from './support/photos.ts';
import fs from 'node:fs';
import type { FrameAnalysis } from '../src/biometrics/types.ts';
import { LivenessSession, type SameFaceLimits, defaultLivenessOptions } from '../src/liveness/index.ts';
import { hasShared, shared } from './support/datasets.ts';
import { Client } from './support/client.ts';
import { thrice } from './support/photos.ts';
import { type TestService, sharedAnalyzer, startTestService } from './support/service.ts';

const limits: MovementLimits = {
  ...DEFAULT_MOVEMENT_LIMITS,
  sameFace: { [DLIB_RESNET.id]: { frontal: 0.93, turned: 0.85 }, [MOBILEFACENET.id]: { frontal: MOBILEFACENET.matchThreshold, turned: MOBILEFACENET.sameFaceTurned } } as MovementLimits['sameFace'],
  stepMillis: 10_000,
};

function unit(seed: number): Float32Array {
  let s = seed;
  return normalize(Float32Array.from({ length: 128 }, () => ((s = (s * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff) - 0.5));
}
const alice = unit(1);
const mallory = unit(2);

/** A frame at `at` ms: frontal with open eyes unless told otherwise. */
const frame = (at: number, change: Partial<{ yaw: number; pitch: number; eyes: number; who: Float32Array | null }> = {}): MovementFrame => ({
  at,
  pose: { yaw: change.yaw ?? 0, pitch: change.pitch ?? 0, roll: 0 },
  eyeOpenness: { left: change.eyes ?? 0.3, right: change.eyes ?? 0.3 },
  embeddings: change.who === null ? {} : { [DLIB_RESNET.id]: change.who ?? alice },
});

const run = (steps: Challenge['steps'], frames: MovementFrame[]) => {
  const check = new HeadMovementCheck(steps, limits);
  for (const f of frames) check.observe(f);
  return check.verdict();
};

describe('head-movement challenge (synthetic pose and eye measurements)', function () {
  it('passes the asked movements in the asked order, by the same face', function () {
    const verdict = run(['turn_left', 'blink', 'look_up'], [
      frame(0),
      frame(400, { yaw: 10 }),
      frame(800, { yaw: 24, who: null }), // turned: no embedding is fine
      frame(1200),
      frame(1600, { eyes: 0.05 }),
      frame(2000),
      frame(2400, { pitch: 16 }),
    ]);
    assert.equal(verdict, null);
  });

  it('a head still turned from the step just made is on its way back, not a wrong movement', function () {
    const verdict = run(['turn_left', 'turn_right', 'look_up'], [
      frame(0),
      frame(300, { yaw: 30 }),
      frame(600, { yaw: 29 }), // still left while right is asked
      frame(900, { yaw: -30 }),
      frame(1200, { yaw: -28 }),
      frame(1500, { pitch: 20 }),
    ]);
    assert.equal(verdict, null);
  });

  it('fails movements made in the wrong order', function () {
    assert.equal(run(['turn_left', 'turn_right'], [frame(0), frame(500, { yaw: -26 }), frame(900, { yaw: 26 })]), 'wrong_movement');
  });

  it('fails when a movement is missing', function () {
    assert.equal(run(['turn_left', 'turn_right', 'look_up'], [frame(0), frame(500, { yaw: 22 }), frame(900), frame(1300, { yaw: -22 })]), 'missing_step');
  });

  it('fails when a movement comes too late', function () {
    assert.equal(run(['turn_left', 'turn_right'], [frame(0), frame(500, { yaw: 22 }), frame(6000), frame(11_000, { yaw: -22 })]), 'too_slow');
  });

  it('fails when the face changes during the challenge', function () {
    assert.equal(run(['turn_left', 'turn_right'], [frame(0), frame(500, { yaw: 22 }), frame(900, { who: mallory }), frame(1300, { yaw: -22 })]), 'identity_switch');
  });

  it('a still photo never passes: the same frontal frame again and again', function () {
    const still = Array.from({ length: 40 }, (_, i) => frame(i * 250));
    for (const steps of [['turn_left', 'blink'], ['blink', 'look_up', 'turn_right']] as Challenge['steps'][]) assert.equal(run(steps, still), 'missing_step');
  });

  it('a blink needs eyes seen open first, then closed against them', function () {
    assert.equal(run(['blink'], [frame(0, { eyes: 0.05 })]), 'missing_step');
    assert.equal(run(['blink'], [frame(0, { eyes: 0.3 }), frame(300, { eyes: 0.05 })]), null);
    // narrow eyes that never close are not a blink
    assert.equal(run(['blink'], [frame(0, { eyes: 0.18 }), frame(300, { eyes: 0.16 })]), 'missing_step');
  });

  it('a looped video turning every way passes only a draw that happens to be its own order', function () {
    // left, right, up, again and again: the screen-light check is what stops the lucky draws
    const loop = (t: number) => [frame(t), frame(t + 300, { yaw: 28 }), frame(t + 600), frame(t + 900, { yaw: -28 }), frame(t + 1200, { pitch: 28 })];
    const frames = [...loop(0), ...loop(1500), ...loop(3000)];
    const own = ['turn_left', 'turn_right', 'look_up'].join();
    let lucky = 0;
    for (let i = 0; i < 60; i++) {
      const { steps } = drawChallenge();
      const verdict = run(steps, frames);
      if (own.startsWith(steps.join())) {
        assert.equal(verdict, null);
        lucky++;
      } else {
        assert.notEqual(verdict, null, `passed ${steps.join(',')}`);
      }
    }
    assert.ok(lucky < 15, `${lucky} of 60 draws matched the loop`);
  });

  it('draws two or three different movements and six colours, consecutive colours different', function () {
    for (let i = 0; i < 50; i++) {
      const c = drawChallenge();
      assert.ok(c.steps.length === 2 || c.steps.length === 3);
      assert.equal(new Set(c.steps).size, c.steps.length);
      for (const s of c.steps) assert.ok(STEPS.includes(s));
      assert.equal(c.colors.length, 6);
      for (let k = 1; k < 6; k++) assert.notEqual(c.colors[k], c.colors[k - 1]);
    }
  });
});

describe('screen-light challenge (real photos tinted as a screen would light the face)', function () {
  let img: Photos;
  before(async () => (img = await photos()));

  /**
   * The reflection of a screen of colour `hex` on a face is simulated by scaling each channel of a
   * real photo up by `strength` × the colour's share of that channel (a weak, 6 % tint).
   */
  const lit = (photo: Buffer, hex: string, strength = 0.06) => {
    const [r, g, b] = parseHex(hex);
    return sharp(photo).linear([1 + (strength * r) / 255, 1 + (strength * g) / 255, 1 + (strength * b) / 255], [0, 0, 0]).jpeg().toBuffer();
  };
  const faceColor = async (photo: Buffer) => {
    const a = await (await sharedAnalyzer()).analyze(new Uint8Array(photo), { mode: 'capture' });
    assert.ok(a.face);
    return a.face.faceColor;
  };
  const framesFor = async (photo: Buffer, colors: string[] | null): Promise<LightFrame[]> => {
    const frames: LightFrame[] = [];
    for (let phase = 0; phase < 6; phase++) {
      const shot = colors ? await lit(photo, colors[phase]) : await sharp(photo).jpeg({ quality: 85 + phase }).toBuffer();
      frames.push({ phase, faceColor: await faceColor(shot) });
    }
    return frames;
  };
  const fixed: Challenge['colors'] = ['#ff0000', '#00ffff', '#0000ff', '#ffff00', '#00ff00', '#ff00ff'];
  const other: Challenge['colors'] = ['#00ff00', '#ff00ff', '#ffff00', '#0000ff', '#ff0000', '#00ffff'];

  it('passes frames whose face colour follows the drawn sequence', async function () {
    const v = verifyScreenLight(fixed, await framesFor(img.personB, fixed));
    assert.ok(v.passed, JSON.stringify(v));
    assert.ok(v.correlation > 0.9);
  });

  it('fails frames that ignore the sequence (a replay or a print)', async function () {
    const v = verifyScreenLight(fixed, await framesFor(img.personB, null));
    assert.equal(v.passed, false, JSON.stringify(v));
  });

  it('fails frames that follow another sequence', async function () {
    const v = verifyScreenLight(fixed, await framesFor(img.personB, other));
    assert.equal(v.passed, false, JSON.stringify(v));
    assert.ok(v.correlation < 0.7);
  });

  it('fails when too few colours were seen', async function () {
    const frames = (await framesFor(img.personB, fixed)).slice(0, 3);
    assert.equal(verifyScreenLight(fixed, frames).passed, false);
  });
});

describe('face anti-spoofing network (presentation-attack.ts), decided per session', function () {
  const options = defaultLivenessOptions({ [DLIB_RESNET.id]: { frontal: 0.93, turned: 0.85 }, [MOBILEFACENET.id]: { frontal: MOBILEFACENET.matchThreshold, turned: MOBILEFACENET.sameFaceTurned } } as SameFaceLimits);
  const analyse = async (bytes: Buffer) => (await sharedAnalyzer()).analyze(new Uint8Array(bytes), { mode: 'capture' });
  /** The verdict of a session of these frames, each observed as the capture service does. */
  const verdict = (mode: 'passive' | 'active', frames: FrameAnalysis[]) => {
    const session = new LivenessSession(mode, mode === 'active' ? drawChallenge() : null, options);
    let accepted = 0;
    frames.forEach((a, i) => {
      if (a.face && session.observe(a, { at: i * 300, lightPhase: i % 6 }).length === 0) accepted++;
    });
    return session.verdict(accepted);
  };

  it('scores every capture frame (in memory, with the frame), and real photos of real people pass as sessions', async function () {
    const img = await photos();
    for (const photo of [...img.personA, img.personB, img.personC]) {
      const a = await analyse(photo);
      assert.ok(a.face && a.face.liveScore !== null && a.face.liveScore >= 0 && a.face.liveScore <= 1, String(a.face?.liveScore));
      assert.equal(verdict('passive', [a, a, a]), null, `a genuine photo refused (live score ${a.face.liveScore.toFixed(3)})`);
    }
    const photo = await (await sharedAnalyzer()).analyze(new Uint8Array(img.personB), { mode: 'photo' });
    assert.equal(photo.face?.liveScore, null, 'only capture frames are scored');
  });

  it('every usable frame must meet the floor: lucky frames do not carry a session; an unusable frame does not count', async function () {
    const a = await analyse((await photos()).personB);
    const at = (liveScore: number): FrameAnalysis => ({ ...a, face: { ...a.face!, liveScore } });
    assert.equal(verdict('passive', [at(0.01), at(0.9), at(0.02)]), 'spoof_detected');
    // as the replay clip scored for 0.6 s of its 4 (a median of these would pass)
    assert.equal(verdict('passive', [at(0.85), at(0.3), at(0.02)]), 'spoof_detected');
    assert.equal(verdict('passive', [at(0.9), at(0.8), at(0.95)]), null);
    const blurred: FrameAnalysis = { ...at(0.01), problems: ['too_blurry'] };
    assert.equal(verdict('passive', [at(0.9), blurred, at(0.95)]), null, 'a frame the session cannot use is not judged');
    // an attack that passed the active challenges would still meet it: it is decided before them
    assert.equal(verdict('active', [at(0.01), at(0.02), at(0.03)]), 'spoof_detected');
    assert.equal(verdict('active', [at(0.9), at(0.9), at(0.9)]), 'liveness_failed', 'high scores alone do not pass the challenges');
  });

  it('the shared spoof set: every replay (its frames as a session) and every print (thrice) is refused in passive mode', async function () {
    if (!hasShared) {
      console.log('      skipped: needs ../shared/datasets');
      this.skip();
    }
    const dir = (...p: string[]) => fs.readdirSync(shared(...p)).filter((f) => /\.jpe?g$/.test(f)).sort();
    const sessions: { name: string; frames: FrameAnalysis[] }[] = [];
    for (const file of dir('spoof', 'print')) {
      const a = await analyse(fs.readFileSync(shared('spoof', 'print', file)));
      sessions.push({ name: file, frames: [a, a, a] });
    }
    const replays = dir('spoof', 'replay');
    for (const name of [...new Set(replays.map((f) => f.split('_')[0]))]) {
      const frames = [];
      for (const f of replays.filter((r) => r.startsWith(`${name}_`))) frames.push(await analyse(fs.readFileSync(shared('spoof', 'replay', f))));
      sessions.push({ name, frames });
    }
    assert.equal(sessions.length, 6);
    for (const s of sessions) assert.equal(verdict('passive', s.frames), 'spoof_detected', `${s.name} passed`);
  });
});

describe("a tenant's own anti-spoofing floor (authface tenant update --pad-threshold)", function () {
  let svc: TestService;
  before(async () => (svc = await startTestService()));
  after(() => svc?.close());

  it('applies to its API sessions: a floor of 1 refuses a genuine face as spoof_detected; taken away, the service floor passes it', async function () {
    const img = await photos();
    const tenant = svc.tenant();
    const api = new Client(svc.url, tenant.apiKey);
    const tenantId = tenant.id;
    assert.equal((await api.run('enroll', thrice(img.personB), { externalUserId: 'bob' })).result.status, 'success');
    svc.service.store.tenants.update(tenantId, { padThreshold: 1 });
    const refused = (await api.run('verify', thrice(img.personB), { externalUserId: 'bob' })).result;
    assert.deepEqual([refused.status, refused.reason], ['fail', 'spoof_detected']);
    svc.service.store.tenants.update(tenantId, { padThreshold: null });
    assert.equal((await api.run('verify', thrice(img.personB), { externalUserId: 'bob' })).result.status, 'success');
  });
});
