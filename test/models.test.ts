import assert from 'node:assert/strict';
import { normalize } from '../src/biometrics/embedding.ts';
import { Gallery, GalleryIndex } from '../src/biometrics/gallery.ts';
import { DLIB_RESNET, type Embeddings, MOBILEFACENET, PRIMARY_MODEL } from '../src/biometrics/matchers/index.ts';
import { capturedModels } from '../src/biometry.ts';
import { decide, decisionThresholds } from '../src/sessions/decisions.ts';
import type { UserAccess } from '../src/store/biometry-store.ts';
import type { Session } from '../src/store/sessions.ts';
import type { User } from '../src/store/users.ts';

/** A deterministic unit vector of `dims` values; `near(base, cos)` one at that cosine from it. */
function unit(seed: number, dims: number): Float32Array {
  let s = seed;
  return normalize(Float32Array.from({ length: dims }, () => ((s = (s * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff) - 0.5));
}
function near(base: Float32Array, cos: number, seed: number): Float32Array {
  const noise = unit(seed, base.length);
  let d = 0;
  for (let i = 0; i < base.length; i++) d += noise[i] * base[i];
  const orth = normalize(Float32Array.from(noise, (n, i) => n - d * base[i]));
  const sin = Math.sqrt(1 - cos * cos);
  return normalize(Float32Array.from(base, (b, i) => cos * b + sin * orth[i]));
}
const dlib = (seed: number) => unit(seed, 128);
const mfn = (seed: number) => unit(seed + 7777, 512);

describe('a 512-D gallery: the int8 scan with float32 rescoring gives the exact answer', function () {
  it('the same two people and the same scores as the float32 scan in JS, among 5,000 templates', function () {
    const compact = new Gallery({ dimensions: 512 });
    const plain = new Gallery({ dimensions: 512, simd: false });
    assert.equal(compact.compact, true, 'SIMD is available here: the compact scan runs');
    const alice = mfn(1);
    for (let i = 0; i < 5000; i++) {
      // many people close to each other and to alice: the int8 error must not reorder them
      const e = i < 50 ? near(alice, 0.55 + i * 0.005, i + 10) : mfn(100 + i);
      compact.upsert(`p${i}`, e);
      plain.upsert(`p${i}`, e);
    }
    for (const probe of [alice, near(alice, 0.9, 3), mfn(99999)]) {
      const [a, b] = [compact.topTwo(probe), plain.topTwo(probe)];
      assert.deepEqual(a.map((m) => m.externalUserId), b.map((m) => m.externalUserId));
      for (let k = 0; k < 2; k++) assert.ok(Math.abs(a[k].score - b[k].score) < 1e-6, `${a[k].score} vs ${b[k].score}`);
      assert.deepEqual(compact.topTwo(probe, a[0].externalUserId)[0].externalUserId, a[1].externalUserId, 'excluding the best gives the second');
    }
    // rows moved by a removal keep their int8 copy and scale
    for (let i = 0; i < 40; i += 2) {
      compact.remove(`p${i}`);
      plain.remove(`p${i}`);
    }
    assert.deepEqual(compact.topTwo(alice).map((m) => m.externalUserId), plain.topTwo(alice).map((m) => m.externalUserId));
    assert.equal(compact.scoreOf(alice, 'p49'), plain.scoreOf(alice, 'p49'));
  });
});

describe('a tenant with people of two models', function () {
  it('each person sits in the gallery of the newest model they hold a template of', function () {
    const g = new GalleryIndex().of('t');
    g.upsert('old', { [DLIB_RESNET.id]: dlib(1) });
    g.upsert('both', { [DLIB_RESNET.id]: dlib(2), [MOBILEFACENET.id]: mfn(2) });
    g.upsert('new', { [MOBILEFACENET.id]: mfn(3) });
    assert.deepEqual([g.modelOf('old'), g.modelOf('both'), g.modelOf('new')], [DLIB_RESNET.id, MOBILEFACENET.id, MOBILEFACENET.id]);
    assert.deepEqual(g.counts(), { [MOBILEFACENET.id]: 2, [DLIB_RESNET.id]: 1 });
    assert.deepEqual(g.models(), [MOBILEFACENET.id, DLIB_RESNET.id]);
    // the old person migrates: they leave dlib's gallery
    g.upsert('old', { [DLIB_RESNET.id]: dlib(1), [MOBILEFACENET.id]: mfn(1) });
    assert.deepEqual(g.counts(), { [MOBILEFACENET.id]: 3 });
    assert.deepEqual(g.models(), [MOBILEFACENET.id]);
    assert.equal(g.size, 3);
  });

  it('captures describe faces with the new model, and the old one only while it decides somebody (or the fleet needs it)', function () {
    const g = new GalleryIndex().of('t');
    const all = [MOBILEFACENET.id, DLIB_RESNET.id];
    assert.deepEqual(capturedModels(g, all, []), [MOBILEFACENET.id], 'an empty tenant: the new model only');
    g.upsert('old', { [DLIB_RESNET.id]: dlib(1) });
    assert.deepEqual(capturedModels(g, all, []), all);
    g.upsert('old', { [MOBILEFACENET.id]: mfn(1) });
    assert.deepEqual(capturedModels(g, all, []), [MOBILEFACENET.id]);
    assert.deepEqual(capturedModels(g, all, [DLIB_RESNET.id]), all, "a fleet door keeps the fleet's model");
    assert.deepEqual(capturedModels(g, [DLIB_RESNET.id], []), [DLIB_RESNET.id], 'a store of the first model only (the hub, the previous release)');
  });
});

describe('decisions across two models, and the guard rails of migration', function () {
  const t = decisionThresholds(0.001, { match: MOBILEFACENET.matchThreshold, duplicate: MOBILEFACENET.duplicateThreshold, margin: MOBILEFACENET.identifyMargin });
  const held = new Map<string, Embeddings>();
  const user = (id: string): User => ({ id, tenantId: 't', externalUserId: id, version: 1, createdAt: '', updatedAt: '', needsReenrolment: false });
  const users = {
    get: async (_t: string, id: string) => (held.has(id) ? user(id) : undefined),
    templates: async (u: User) => held.get(u.externalUserId) ?? {},
  } as unknown as UserAccess;
  const session = (flow: Session['flow'], externalUserId: string | null = null): Session => ({
    id: 's', tenantId: 't', clientState: 'c', flow, externalUserId, redirectUrl: 'http://localhost/', status: 'in_progress', reason: null, score: null,
    resultUserId: null, eventId: null, createdAt: '', expiresAt: '', boundAt: null, completedAt: null, challenge: null, doorId: null, factor: 'face', candidates: null,
  });
  const index = new GalleryIndex();
  const put = (id: string, templates: Embeddings) => {
    held.set(id, templates);
    index.of('t').upsert(id, templates);
  };
  // ten people of the previous release (dlib only), five enrolled since (both models)
  for (let i = 0; i < 10; i++) put(`old${i}`, { [DLIB_RESNET.id]: dlib(i + 1) });
  for (let i = 0; i < 5; i++) put(`new${i}`, { [DLIB_RESNET.id]: dlib(i + 100), [MOBILEFACENET.id]: mfn(i + 100) });
  // and sixty more: below about 55 people MobileFaceNet's identify threshold is its 1:1 one, and a
  // capture that verifies is then strong as well
  for (let i = 0; i < 60; i++) put(`more${i}`, { [DLIB_RESNET.id]: dlib(i + 300), [MOBILEFACENET.id]: mfn(i + 300) });
  const SIZE = 75;
  const dlibRule = t[DLIB_RESNET.id].identify.rule(SIZE).threshold;

  it("identify names a dlib person by dlib's rule for the whole tenant, and stores their new template from the same capture", async function () {
    const probe = { [DLIB_RESNET.id]: near(dlib(3), (dlibRule + 1) / 2, 5), [PRIMARY_MODEL]: mfn(3) };
    const d = await decide(session('identify'), probe, users, index, t);
    assert.deepEqual([d.status, d.externalUserId], ['success', 'old2']);
    assert.deepEqual(d.write && { kind: d.write.kind, models: Object.keys(d.write.templates) }, { kind: 'migrate', models: [PRIMARY_MODEL] });
  });

  it('a person with the new template is decided by it; the score is on its scale', async function () {
    const probe = { [DLIB_RESNET.id]: dlib(999), [PRIMARY_MODEL]: near(mfn(102), 0.8, 6) };
    const d = await decide(session('identify'), probe, users, index, t);
    assert.deepEqual([d.status, d.externalUserId], ['success', 'new2']);
    assert.ok(Math.abs((d.score as number) - 0.8) < 1e-3);
  });

  it("a strong capture of a person decided by the new model joins their template (adapt), with the new model's embedding only", async function () {
    const mfnRule = t[PRIMARY_MODEL].identify.rule(SIZE).threshold;
    const probe = { [DLIB_RESNET.id]: dlib(998), [PRIMARY_MODEL]: near(mfn(103), (mfnRule + 1) / 2, 14) };
    for (const [flow, id] of [['identify', null], ['verify', 'new3']] as const) {
      const d = await decide(session(flow, id), probe, users, index, t);
      assert.deepEqual([d.status, d.externalUserId], ['success', 'new3'], flow);
      assert.deepEqual(d.write && { kind: d.write.kind, user: 'user' in d.write && d.write.user.externalUserId, models: Object.keys(d.write.templates) }, { kind: 'adapt', user: 'new3', models: [PRIMARY_MODEL] }, flow);
      assert.equal(d.write?.templates[PRIMARY_MODEL], probe[PRIMARY_MODEL], flow);
    }
  });

  it("a store that does not learn from captures (the hub's) gets the same decisions and no migration or capture write", async function () {
    const mfnRule = t[PRIMARY_MODEL].identify.rule(SIZE).threshold;
    const cases = [
      { flow: 'identify', id: null, probe: { [DLIB_RESNET.id]: near(dlib(3), (dlibRule + 1) / 2, 5), [PRIMARY_MODEL]: mfn(3) }, expected: 'old2' },
      { flow: 'verify', id: 'new3', probe: { [DLIB_RESNET.id]: dlib(998), [PRIMARY_MODEL]: near(mfn(103), (mfnRule + 1) / 2, 14) }, expected: 'new3' },
    ] as const;
    for (const c of cases) {
      const learning = await decide(session(c.flow, c.id), c.probe, users, index, t);
      assert.ok(learning.write, `${c.flow}: a door would write`);
      const d = await decide(session(c.flow, c.id), c.probe, users, index, t, { learnsFromCaptures: false });
      assert.deepEqual([d.status, d.externalUserId, d.score, d.write], ['success', c.expected, learning.score, undefined], c.flow);
    }
  });

  it('a capture that verifies at 1:1 but is not strong, or looks like another person, does not join a template', async function () {
    const mfnRule = t[PRIMARY_MODEL].identify.rule(SIZE).threshold;
    const weak = (t[PRIMARY_MODEL].match + mfnRule) / 2;
    assert.ok(weak >= t[PRIMARY_MODEL].match && weak < mfnRule);
    const d = await decide(session('verify', 'new4'), { [DLIB_RESNET.id]: dlib(997), [PRIMARY_MODEL]: near(mfn(104), weak, 15) }, users, index, t);
    assert.deepEqual([d.status, d.write], ['success', undefined], 'verified, not strong');
    // strong for new4, and at new0's duplicate threshold too: a blend of the two faces
    const blend = normalize(Float32Array.from(mfn(104), (v, i) => 1.6 * v + mfn(100)[i]));
    const toNew0 = blend.reduce((sum, v, i) => sum + v * mfn(100)[i], 0);
    const toNew4 = blend.reduce((sum, v, i) => sum + v * mfn(104)[i], 0);
    assert.ok(toNew4 >= mfnRule && toNew0 >= t[PRIMARY_MODEL].duplicate && toNew4 - toNew0 >= t[PRIMARY_MODEL].identify.rule(SIZE).margin, `${toNew4} ${toNew0}`);
    const other = await decide(session('verify', 'new4'), { [DLIB_RESNET.id]: dlib(996), [PRIMARY_MODEL]: blend }, users, index, t);
    assert.deepEqual([other.status, other.write], ['success', undefined], "another person's face by the new model");
  });

  it('verify at a score that passes 1:1 but is not strong: success, and no new template', async function () {
    const weak = (t[DLIB_RESNET.id].match + dlibRule) / 2;
    assert.ok(weak < dlibRule);
    const probe = { [DLIB_RESNET.id]: near(dlib(4), weak, 7), [PRIMARY_MODEL]: mfn(4) };
    const d = await decide(session('verify', 'old3'), probe, users, index, t);
    assert.equal(d.status, 'success');
    assert.equal(d.write, undefined, 'a weak match does not migrate');
  });

  it("never over another person's face: a new template that is somebody else's by the new model is not stored", async function () {
    // like new1 by the new model: at its duplicate threshold, not at its identify threshold
    const like = (t[PRIMARY_MODEL].duplicate + t[PRIMARY_MODEL].identify.rule(SIZE).threshold) / 2;
    assert.ok(like >= t[PRIMARY_MODEL].duplicate && like < t[PRIMARY_MODEL].identify.rule(SIZE).threshold);
    const probe = { [DLIB_RESNET.id]: near(dlib(5), 0.99, 8), [PRIMARY_MODEL]: near(mfn(101), like, 9) };
    const d = await decide(session('identify'), probe, users, index, t);
    assert.deepEqual([d.status, d.externalUserId, d.write], ['success', 'old4', undefined]);
  });

  it('two people passing in two models at once: ambiguous, nobody named', async function () {
    const probe = { [DLIB_RESNET.id]: near(dlib(6), 0.99, 10), [PRIMARY_MODEL]: near(mfn(100), 0.9, 11) };
    const d = await decide(session('identify'), probe, users, index, t);
    assert.deepEqual([d.status, d.reason], ['fail', 'ambiguous_match']);
  });

  it("enrolment checks every model's people for a duplicate, at each model's threshold", async function () {
    const oldFace = { [DLIB_RESNET.id]: near(dlib(7), 0.97, 12), [PRIMARY_MODEL]: mfn(5000) };
    assert.deepEqual([(await decide(session('enroll', 'x'), oldFace, users, index, t)).reason], ['conflict'], "a dlib person's face");
    const newFace = { [DLIB_RESNET.id]: dlib(5001), [PRIMARY_MODEL]: near(mfn(103), 0.7, 13) };
    assert.deepEqual([(await decide(session('enroll', 'x'), newFace, users, index, t)).reason], ['conflict'], "a new-model person's face");
    const fresh = { [DLIB_RESNET.id]: dlib(5002), [PRIMARY_MODEL]: mfn(5002) };
    const d = await decide(session('enroll', 'x'), fresh, users, index, t);
    assert.deepEqual([d.status, d.write?.kind, Object.keys(d.write?.templates ?? {}).sort()], ['success', 'enroll', [DLIB_RESNET.id, PRIMARY_MODEL].sort()], 'every model in use gets a template');
    const without = await decide(session('enroll', 'x'), { [PRIMARY_MODEL]: mfn(5003) }, users, index, t);
    assert.deepEqual([without.status, without.reason], ['fail', 'not_enough_frames'], 'a capture without a model still in use cannot be checked against its people');
  });
});
