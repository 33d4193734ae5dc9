import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { similarity } from '../src/biometrics/embedding.ts';
import { type FaceAnalyzer, type FrameAnalysis, ImageInputError, WorkerTaskError } from '../src/biometrics/index.ts';
import { type Embeddings, MATCHERS, PRIMARY_MODEL } from '../src/biometrics/matchers/index.ts';
import { MOBILEFACENET_FILE } from '../src/biometrics/matchers/mobilefacenet.ts';
import { tunedSession } from '../src/biometrics/onnx-session.ts';
import { ModelFiles } from '../src/biometrics/models.ts';
import { decisionThresholds } from '../src/sessions/decisions.ts';
import { type Photos, photos } from './support/photos.ts';
import { sharedAnalyzer } from './support/service.ts';

describe('face engine: decoding and the quality gate on real photos', function () {
  let analyzer: FaceAnalyzer;
  let img: Photos;
  let reference: Embeddings;
  const models = MATCHERS.map((m) => m.id);
  const analyze = async (bytes: Buffer) => analyzer.analyze(new Uint8Array(bytes), { mode: 'capture', models });
  const thresholds = decisionThresholds(0.001, { match: MATCHERS[0].matchThreshold, duplicate: MATCHERS[0].duplicateThreshold, margin: MATCHERS[0].identifyMargin });
  /**
   * The same face again, by every model: `strength` 'identify' asks as much as identify does of a
   * gallery of 100,000 people (the same photo re-encoded), 'verify' the 1:1 threshold.
   */
  const assertSameFace = (r: FrameAnalysis, strength: 'identify' | 'verify') => {
    for (const { id } of MATCHERS) {
      const score = similarity(reference[id] as Float32Array, r.embeddings[id] as Float32Array);
      const needed = strength === 'identify' ? thresholds[id].identify.rule(100_000).threshold : thresholds[id].match;
      assert.ok(score >= needed, `${id}: ${score} < ${needed}`);
    }
  };

  before(async function () {
    analyzer = await sharedAnalyzer();
    img = await photos();
    const r = await analyze(img.personB);
    assert.deepEqual(r.problems, []);
    reference = r.embeddings;
    assert.deepEqual(Object.keys(reference).sort(), [...models].sort(), 'every model asked for described the face');
  });

  it('decodes JPEG, PNG and WebP to the same face', async function () {
    for (const bytes of [await sharp(img.personB).png().toBuffer(), await sharp(img.personB).webp({ quality: 92 }).toBuffer()]) {
      const r = await analyze(bytes);
      assert.deepEqual(r.problems, []);
      assertSameFace(r, 'identify');
    }
  });

  it('honours EXIF orientation', async function () {
    // the pixels are stored turned a quarter; the EXIF tag says how to show them upright
    const sideways = await sharp(img.personB).rotate(-90).withMetadata({ orientation: 6 }).jpeg().toBuffer();
    const meta = await sharp(sideways).metadata();
    assert.equal(meta.orientation, 6);
    const r = await analyze(sideways);
    assert.deepEqual(r.problems, []);
    assertSameFace(r, 'identify');
    // the analysed image is the upright one: as wide as the original (or its 1280 px working copy)
    const upright = await analyze(img.personB);
    assert.equal(r.width, upright.width);
    assert.equal(r.height, upright.height);
  });

  it('finds faces in tight crops (the detector needs margin: the engine pads and retries)', async function () {
    const full = await analyze(img.personB);
    const box = full.face!.box;
    const meta = await sharp(img.personB).metadata();
    const k = (meta.width as number) / full.width;
    // a crop just inside the detector's box: no margin around the face at all
    const tight = await sharp(img.personB)
      .extract({ left: Math.round((box.x + box.width * 0.1) * k), top: Math.round((box.y + box.height * 0.1) * k), width: Math.round(box.width * 0.8 * k), height: Math.round(box.height * 0.8 * k) })
      .resize(160)
      .png()
      .toBuffer();
    const r = await analyze(tight);
    assert.ok(r.face, 'face found in the tight crop');
    assertSameFace(r, 'verify');
  });

  it('names quality problems: blur, darkness, a small face', async function () {
    const face = (await analyze(img.personB)).face!;
    // blur in proportion to the face, so it is blur at the scale the descriptor sees
    const blurred = await analyze(await sharp(img.personB).blur(Math.max(2, face.box.width / 45)).jpeg().toBuffer());
    assert.ok(blurred.problems.includes('too_blurry'), `blur: ${blurred.problems}`);
    const dark = await analyze(await sharp(img.personB).modulate({ brightness: 0.2 }).jpeg().toBuffer());
    assert.ok(dark.problems.includes('too_dark'), `dark: ${dark.problems}`);
    const bright = await analyze(await sharp(img.personB).linear(0.5, 200).jpeg().toBuffer());
    assert.ok(bright.problems.includes('too_bright'), `bright: ${bright.problems}`);
    const meta = await sharp(img.personB).metadata();
    const small = await analyze(await sharp(img.personB).resize(Math.round((meta.width as number) / 12)).extend({ top: 200, bottom: 200, left: 200, right: 200, background: '#808080' }).jpeg().toBuffer());
    assert.ok(small.problems.includes('face_too_small'), `small: ${small.problems}`);
    for (const r of [blurred, dark, bright, small]) assert.ok(r.embeddings[PRIMARY_MODEL], 'the face is still found and described');
  });

  it('reports pose and eye openness for a frontal open-eyed face', async function () {
    const r = await analyze(img.personB);
    assert.ok(Math.abs(r.face!.pose.yaw) < 30);
    assert.ok(r.face!.eyeOpenness.left > 0.1 && r.face!.eyeOpenness.right > 0.1);
    assert.ok(r.face!.brightness > 40 && r.face!.brightness < 225);
  });

  it('describes the face with the models asked for only: a tenant every person of which holds the new template no longer runs the old one', async function () {
    const only = await analyzer.analyze(new Uint8Array(img.personB), { mode: 'capture', models: [PRIMARY_MODEL] });
    assert.deepEqual(Object.keys(only.embeddings), [PRIMARY_MODEL]);
    assertSameFace({ ...only, embeddings: { ...reference, [PRIMARY_MODEL]: only.embeddings[PRIMARY_MODEL] } }, 'identify');
    const none = await analyzer.analyze(new Uint8Array(img.personB), { mode: 'capture', models: [] });
    assert.ok(none.face, 'the face is still found (a turnstile watching for someone)');
    assert.deepEqual(none.embeddings, {});
  });

  it('refuses images over the pixel limit from their header, before decoding them (413)', async function () {
    const huge = await sharp({ create: { width: 6000, height: 5000, channels: 3, background: '#777' } }).png().toBuffer();
    await assert.rejects(analyze(huge), (err: unknown) => err instanceof ImageInputError && err.kind === 'image_too_large');
  });

  it('refuses what is not JPEG, PNG or WebP (415) and broken files (400)', async function () {
    const tiff = await sharp(img.personB).tiff().toBuffer();
    await assert.rejects(analyze(tiff), (err: unknown) => err instanceof ImageInputError && err.kind === 'unsupported_media_type');
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>');
    await assert.rejects(analyze(svg), (err: unknown) => err instanceof ImageInputError && err.kind === 'unsupported_media_type');
    // a JPEG whose header is cut before its frame header: refused before it reaches a worker
    const broken = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10]), Buffer.alloc(400)]);
    await assert.rejects(analyze(broken), (err: unknown) => err instanceof ImageInputError && err.kind === 'invalid_image');
    // a whole header with a broken body: refused by the decoder in the worker
    const whole = await sharp(img.personB).jpeg().toBuffer();
    const badBody = Buffer.concat([whole.subarray(0, Math.floor(whole.length / 2)), Buffer.alloc(3000, 0xff)]);
    await assert.rejects(analyze(badBody), (err: unknown) => err instanceof WorkerTaskError && err.code === 'invalid_image');
  });
});

describe("MobileFaceNet's ONNX session: the fastest optimisation level on this CPU, never a different function", function () {
  it('takes the faster of the levels it timed, and answers as the unoptimised-layout session does', async function () {
    this.timeout(60_000);
    const file = new ModelFiles().read(MOBILEFACENET_FILE);
    const tuned = await tunedSession(file, 112);
    const levels = Object.keys(tuned.timings);
    assert.deepEqual(levels.sort(), ['all', 'extended']);
    for (const l of levels) assert.ok(tuned.timings[l as 'all'] > 0, `${l} was timed`);
    assert.ok(tuned.timings[tuned.level] <= Math.min(...Object.values(tuned.timings)), `${tuned.level} is the fastest: ${JSON.stringify(tuned.timings)}`);

    const plain = await ort.InferenceSession.create(file, { graphOptimizationLevel: 'extended', intraOpNumThreads: 1 });
    const input = Float32Array.from({ length: 3 * 112 * 112 }, (_v, i) => ((i * 7919) % 255) / 128 - 1);
    const expected = (await plain.run({ [plain.inputNames[0]]: new ort.Tensor('float32', input, [1, 3, 112, 112]) }))[plain.outputNames[0]].data as Float32Array;
    const got = await tuned.run(input);
    assert.equal(got.length, 512);
    const worst = Math.max(...got.map((v, i) => Math.abs(v - expected[i])));
    assert.ok(worst < 1e-4, `outputs differ by ${worst}`);
    await plain.release();
  });
});
