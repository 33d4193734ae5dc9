import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chipTransform, fitSimilarity, type Point } from '../src/biometrics/alignment.ts';
import { meanEmbedding, normalize, similarity } from '../src/biometrics/embedding.ts';
import { Gallery } from '../src/biometrics/gallery.ts';
import { auc, equalErrorRate, kFoldAccuracy, tarAtFar, thresholdAtFar, type ScoredPair } from '../src/biometrics/metrics.ts';
import { qualityProblems, DEFAULT_QUALITY } from '../src/biometrics/quality.ts';
import type { FaceObservation } from '../src/biometrics/types.ts';
import { loadSettings, settingsTable } from '../src/config/settings.ts';
import { activityCsv } from '../src/console/pages.ts';
import { MemorySignInThrottle, clientAddress, trustedProxies, waitAfter } from '../src/console/signin-throttle.ts';
import { EmbeddingCipher, loadMasterKey } from '../src/store/crypto.ts';
import { openStore } from '../src/store/index.ts';
import { PRIMARY_MODEL } from '../src/biometrics/matchers/index.ts';
import { CAPTURE_REFRESH_MS, MAX_CAPTURES } from '../src/store/users.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { ReplayGuard } from '../src/hub/replay-guard.ts';

function randomUnit(seed: number): Float32Array {
  const v = new Float32Array(128);
  let s = seed;
  for (let i = 0; i < 128; i++) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    v[i] = s / 0x7fffffff - 0.5;
  }
  return normalize(v);
}

describe('metrics', function () {
  const pairs: ScoredPair[] = [
    { score: 0.9, same: true, fold: 1 },
    { score: 0.8, same: true, fold: 1 },
    { score: 0.7, same: false, fold: 1 },
    { score: 0.6, same: true, fold: 2 },
    { score: 0.5, same: false, fold: 2 },
    { score: 0.4, same: false, fold: 2 },
  ];

  it('AUC counts the fraction of correctly ordered genuine/impostor pairs', function () {
    // impostor 0.7 outranks genuine 0.6: 8 of 9 orderings are right
    assert.equal(auc(pairs), 8 / 9);
    assert.equal(auc(pairs.map((p) => ({ ...p, score: p.same ? 1 : 0 }))), 1);
  });

  it('TAR at FAR 0 uses a threshold just above the best impostor', function () {
    assert.ok(thresholdAtFar(pairs, 0) > 0.7 && thresholdAtFar(pairs, 0) < 0.7001);
    assert.equal(tarAtFar(pairs, 0), 2 / 3);
  });

  it('EER sits where false accepts and false rejects cross', function () {
    assert.ok(Math.abs(equalErrorRate(pairs) - 1 / 3) < 1e-9);
  });

  it('k-fold accuracy scores each fold at the threshold picked on the others', function () {
    const k = kFoldAccuracy(pairs);
    assert.ok(k);
    // fold 2's threshold (0.55) applied to fold 1 rejects nothing genuine but accepts 0.7: 2/3;
    // fold 1's threshold (0.75) applied to fold 2 rejects the genuine 0.6: 2/3
    assert.deepEqual(k.folds.map((f) => Number(f.toFixed(4))), [0.6667, 0.6667]);
    assert.equal(kFoldAccuracy(pairs.map(({ fold: _f, ...p }) => p)), null);
  });
});

for (const simd of [true, false]) describe(`gallery (in-memory 1:N index, ${simd ? 'WebAssembly SIMD' : 'JS'} scan)`, function () {
  it('uses the scan it was asked for', function () {
    assert.equal(new Gallery({ simd }).usesSimd, simd);
  });

  it('finds the most similar template and keeps rows consistent through removals', function () {
    const g = new Gallery({ simd });
    const vectors = Array.from({ length: 200 }, (_, i) => randomUnit(i + 1));
    vectors.forEach((v, i) => g.upsert(`u${i}`, v));
    assert.equal(g.size, 200);
    assert.equal(g.best(vectors[37])?.externalUserId, 'u37');
    assert.ok(Math.abs((g.best(vectors[37])?.score ?? 0) - 1) < 1e-5);
    assert.ok(g.remove('u37'));
    assert.ok(!g.remove('u37'));
    assert.notEqual(g.best(vectors[37])?.externalUserId, 'u37');
    // the row moved into the hole still answers as itself
    assert.equal(g.best(vectors[199])?.externalUserId, 'u199');
    assert.equal(g.size, 199);
    assert.equal(g.best(vectors[5], 'u5')?.externalUserId === 'u5', false);
    g.upsert('u5', vectors[6]);
    assert.equal(g.size, 199, 'upsert replaces');
    assert.equal(g.best(vectors[6], 'u6')?.externalUserId, 'u5');
  });

  it('agrees with a brute-force scan, across capacity growth', function () {
    const g = new Gallery({ simd });
    const vectors = Array.from({ length: 5000 }, (_, i) => randomUnit(1000 + i));
    vectors.forEach((v, i) => g.upsert(`u${i}`, v));
    for (let q = 0; q < 20; q++) {
      const probe = randomUnit(99_000 + q);
      let best = -Infinity;
      let bestId = '';
      vectors.forEach((v, i) => {
        const s = similarity(probe, v);
        if (s > best) [best, bestId] = [s, `u${i}`];
      });
      const found = g.best(probe);
      assert.equal(found?.externalUserId, bestId);
      assert.ok(Math.abs((found?.score ?? 0) - best) < 1e-5);
    }
  });

  it('an empty gallery finds nothing', function () {
    assert.equal(new Gallery({ simd }).best(randomUnit(1)), undefined);
  });
});

describe('embeddings and alignment maths', function () {
  it('normalises and averages to unit length', function () {
    const m = meanEmbedding([randomUnit(1), randomUnit(2), randomUnit(3)]);
    assert.ok(Math.abs(similarity(m, m) - 1) < 1e-5);
  });

  it('fits a similarity transform exactly when one exists', function () {
    const from: Point[] = [[0, 0], [10, 0], [0, 10], [7, 3]];
    const angle = 0.3;
    const scale = 1.7;
    const to = from.map(([x, y]) => [scale * (Math.cos(angle) * x - Math.sin(angle) * y) + 5, scale * (Math.sin(angle) * x + Math.cos(angle) * y) - 2] as Point);
    const t = fitSimilarity(from, to);
    assert.ok(Math.abs(t.a - scale * Math.cos(angle)) < 1e-9);
    assert.ok(Math.abs(t.b - scale * Math.sin(angle)) < 1e-9);
    assert.ok(Math.abs(t.tx - 5) < 1e-9 && Math.abs(t.ty + 2) < 1e-9);
  });

  it('maps a face twice the size to a transform of twice the scale', function () {
    const face: Point[] = Array.from({ length: 68 }, (_, i) => [100 + (i % 10) * 5, 100 + Math.floor(i / 10) * 7]);
    const t1 = chipTransform(face);
    const t2 = chipTransform(face.map(([x, y]) => [x * 2, y * 2]));
    assert.ok(Math.abs(Math.hypot(t2.a, t2.b) / Math.hypot(t1.a, t1.b) - 2) < 1e-9);
    assert.throws(() => chipTransform(face.slice(0, 5)));
  });
});

describe('quality gate', function () {
  const good: FaceObservation = {
    box: { x: 0, y: 0, width: 200, height: 200 },
    confidence: 0.9,
    pose: { yaw: 0, pitch: 0, roll: 0 },
    eyeOpenness: { left: 0.3, right: 0.3 },
    sharpness: 0.3,
    brightness: 120,
    faceColor: [150, 120, 100],
    antispoof: 0.8,
    liveness: 0.9,
    liveScore: 0.9,
    artefacts: { border: 0, moire: 0 },
  };
  const cases: [string, Partial<FaceObservation>, string[]][] = [
    ['a good face', {}, []],
    ['a small face', { box: { x: 0, y: 0, width: 40, height: 40 } }, ['face_too_small']],
    ['a turned head', { pose: { yaw: 45, pitch: 0, roll: 0 } }, ['face_not_frontal']],
    ['a raised head', { pose: { yaw: 0, pitch: -40, roll: 0 } }, ['face_not_frontal']],
    ['a blurred face', { sharpness: 0.001 }, ['too_blurry']],
    ['a dark face', { brightness: 20 }, ['too_dark']],
    ['a washed-out face', { brightness: 240 }, ['too_bright']],
  ];
  for (const [name, change, expected] of cases) {
    it(`${name} → ${expected.join(', ') || 'usable'}`, function () {
      assert.deepEqual(qualityProblems({ ...good, ...change }, DEFAULT_QUALITY), expected);
    });
  }
});

describe('settings', function () {
  it('validates the environment and names the bad variable', function () {
    assert.throws(() => loadSettings({ PORT: 'eighty' }), /PORT/);
    assert.throws(() => loadSettings({ AUTHFACE_MATCH_THRESHOLD: '2' }), /AUTHFACE_MATCH_THRESHOLD/);
    assert.throws(() => loadSettings({ PUBLIC_URL: 'not a url' }), /PUBLIC_URL/);
    const s = loadSettings({ PORT: '9000' });
    assert.equal(s.publicUrl, 'http://localhost:9000');
    assert.equal(loadSettings({ PUBLIC_URL: 'https://face.example.com/' }).publicUrl, 'https://face.example.com');
  });

  it("the README's configuration table is the generated one", function () {
    const readme = fs.readFileSync(path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'README.md'), 'utf8');
    assert.ok(readme.includes(settingsTable()), 'README.md: paste the output of `authface config`');
  });

  it('documents every option', function () {
    const table = settingsTable();
    for (const name of ['PORT', 'HOST', 'PUBLIC_URL', 'AUTHFACE_DATA_DIR', 'AUTHFACE_MASTER_KEY', 'AUTHFACE_SESSION_TTL_SECONDS']) {
      assert.match(table, new RegExp(`\\| \`${name}\` \\|`));
    }
  });
});

describe('store', function () {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-store-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('creates a 0600 master key once and reuses it', function () {
    const k1 = loadMasterKey(dir, undefined);
    const k2 = loadMasterKey(dir, undefined);
    assert.deepEqual(k1, k2);
    assert.equal(fs.statSync(path.join(dir, 'master.key')).mode & 0o777, 0o600);
    assert.deepEqual(loadMasterKey(dir, 'ab'.repeat(32)), Buffer.alloc(32, 0xab));
    assert.throws(() => loadMasterKey(dir, 'short'), /32-byte key/);
    fs.chmodSync(path.join(dir, 'master.key'), 0o644);
    assert.throws(() => loadMasterKey(dir, undefined), /readable by other users/);
  });

  it('AES-GCM sealing is bound to its row and detects tampering', function () {
    const cipher = new EmbeddingCipher(crypto.randomBytes(32));
    const e = randomUnit(3);
    const { nonce, ciphertext } = cipher.seal(e, 'template:u:1');
    assert.deepEqual(cipher.open(nonce, ciphertext, 'template:u:1'), e);
    assert.throws(() => cipher.open(nonce, ciphertext, 'template:u:2'));
    assert.throws(() => new EmbeddingCipher(crypto.randomBytes(32)).open(nonce, ciphertext, 'template:u:1'));
  });

  it('users keep versions, template history and a tombstone; a revived id continues the version', function () {
    const store = openStore(dir, undefined);
    try {
      const t = store.tenants.create({ name: 't', allowedOrigins: ['https://a.example'], livenessMode: 'passive' });
      const u = store.users.enroll(t.id, 'ext', { [FLEET_MODEL]: randomUnit(1) });
      assert.equal(u.version, 1);
      const u2 = store.users.replaceTemplate(u, { [FLEET_MODEL]: randomUnit(2) });
      assert.equal(u2.version, 2);
      assert.deepEqual(store.users.templateVersions(u2).map((v) => [v.version, v.active]), [[1, false], [2, true]]);
      assert.deepEqual(store.users.templates(u2), { [FLEET_MODEL]: randomUnit(2) });
      assert.throws(() => store.users.enroll(t.id, 'ext', { [FLEET_MODEL]: randomUnit(3) }), /already enrolled/);
      assert.ok(store.users.delete(t.id, 'ext'));
      assert.equal(store.users.delete(t.id, 'ext'), null);
      assert.equal(store.users.get(t.id, 'ext'), undefined);
      const tomb = store.db.prepare('SELECT version, deleted_at, external_user_id FROM users WHERE tenant_id = ?').get(t.id) as { version: number; deleted_at: string; external_user_id: string };
      assert.match(tomb.external_user_id, /^erased:/, 'the tombstone keeps a pseudonym, not the id');
      assert.equal(tomb.version, 3);
      assert.ok(tomb.deleted_at);
      assert.equal((store.db.prepare('SELECT COUNT(*) AS n FROM templates').get() as { n: number }).n, 0);
      const revived = store.users.enroll(t.id, 'ext', { [FLEET_MODEL]: randomUnit(4) });
      assert.equal(revived.version, 4);
      assert.equal([...store.users.activeTemplates()].length, 1);
    } finally {
      store.close();
    }
  });

  it('further captures: beside the enrolment template, capped, never replacing it, averaged in, bound to their slot, local, and erased with the person', function () {
    const store = openStore(dir, undefined);
    try {
      const mfnId = PRIMARY_MODEL;
      const unit512 = (seed: number) => {
        let x = seed * 7919;
        return normalize(Float32Array.from({ length: 512 }, () => ((x = (x * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff) - 0.5));
      };
      const journal: string[] = [];
      store.users.changeJournal = (c) => journal.push(c.kind);
      const t = store.tenants.create({ name: 't', allowedOrigins: [], livenessMode: 'passive' });
      const enrolment = unit512(1);
      const u = store.users.enroll(t.id, 'ext', { [FLEET_MODEL]: randomUnit(1), [mfnId]: enrolment });
      const day = 24 * 3600 * 1000;
      const captureCounts = (user: { id: string }) =>
        Object.fromEntries((store.db.prepare('SELECT model, COUNT(*) AS n FROM templates WHERE user_id = ? AND active = 1 AND capture > 0 GROUP BY model').all(user.id) as { model: string; n: number }[]).map((r) => [r.model, r.n]));
      const same = (a: Float32Array | undefined, b: Float32Array, what = 'the same template') => assert.ok(a && similarity(a, b) > 1 - 1e-6, what);
      const start = Date.now();
      assert.deepEqual(store.users.addCapture(u, mfnId, unit512(2), new Date(start)), { slot: 1, replaced: false });
      assert.deepEqual(store.users.addCapture(u, mfnId, unit512(3), new Date(start + day)), { slot: 2, replaced: false });
      assert.equal(store.users.addCapture(u, mfnId, unit512(4), new Date(start + 2 * day)), null, `capped at ${MAX_CAPTURES}: a fresh set is kept as it is`);
      assert.deepEqual(captureCounts(u), { [mfnId]: MAX_CAPTURES });
      // the person's template is the mean of all three; the enrolment template alone is what replicates
      same(store.users.templates(u)[mfnId], meanEmbedding([enrolment, unit512(2), unit512(3)]));
      same(store.users.enrolmentTemplates(u)[mfnId], enrolment);
      const indexed = store.users.activeTemplates().filter((a) => a.model === mfnId);
      assert.equal(indexed.length, 1, 'one row per person and model in the 1:N index');
      same(indexed[0].embedding, meanEmbedding([enrolment, unit512(2), unit512(3)]));
      // once the oldest capture is CAPTURE_REFRESH_MS old, a new one replaces it, never the enrolment
      assert.deepEqual(store.users.addCapture(u, mfnId, unit512(5), new Date(start + CAPTURE_REFRESH_MS)), { slot: 1, replaced: true });
      same(store.users.templates(u)[mfnId], meanEmbedding([enrolment, unit512(5), unit512(3)]));
      same(store.users.enrolmentTemplates(u)[mfnId], enrolment);
      assert.deepEqual(journal, ['upsert'], 'a capture is not a change of the fleet: nothing journalled');
      // a capture sealed for slot 1 moved into slot 2, or over the enrolment template, does not open
      const rows = store.db.prepare('SELECT id, capture, nonce, ciphertext FROM templates WHERE model = ? ORDER BY capture').all(mfnId) as { id: string; capture: number; nonce: Buffer; ciphertext: Buffer }[];
      const move = store.db.prepare('UPDATE templates SET nonce = ?, ciphertext = ? WHERE id = ?');
      move.run(rows[1].nonce, rows[1].ciphertext, rows[2].id);
      same(store.users.templates(u)[mfnId], meanEmbedding([enrolment, unit512(5)]), 'the moved capture is skipped');
      move.run(rows[1].nonce, rows[1].ciphertext, rows[0].id);
      assert.deepEqual(store.users.templates(u)[mfnId], undefined, 'captures never decide without the enrolment template they joined');
      assert.ok(store.users.templates(u)[FLEET_MODEL], 'the other model still decides');
      move.run(rows[0].nonce, rows[0].ciphertext, rows[0].id);
      move.run(rows[2].nonce, rows[2].ciphertext, rows[2].id);
      // the same version coming back from the hub keeps them; a new version (an update) erases them
      store.users.replicate(t.id, 'ext', u.version, { [mfnId]: enrolment });
      assert.deepEqual(captureCounts(u), { [mfnId]: 2 });
      const u2 = store.users.replaceTemplate(u, { [FLEET_MODEL]: randomUnit(2), [mfnId]: unit512(6) });
      assert.deepEqual(captureCounts(u2), {});
      same(store.users.templates(u2)[mfnId], unit512(6));
      assert.deepEqual(store.users.templateVersions(u2).map((v) => [v.version, v.active]), [[1, false], [1, false], [2, true], [2, true]], 'history: enrolment templates only');
      store.users.addCapture(u2, mfnId, unit512(7), new Date());
      const v3 = store.users.replicate(t.id, 'ext', 3, { [FLEET_MODEL]: randomUnit(3) });
      assert.deepEqual(Object.keys(v3), [FLEET_MODEL], 'a newer version from the hub: the captures of the old face are gone');
      assert.equal((store.db.prepare('SELECT COUNT(*) AS n FROM templates WHERE capture > 0').get() as { n: number }).n, 0);
      // deletion takes every template: enrolment, history and captures
      const u3 = store.users.get(t.id, 'ext') as NonNullable<ReturnType<typeof store.users.get>>;
      store.users.replicate(t.id, 'ext', 3, { [mfnId]: unit512(8) });
      store.users.addCapture(u3, mfnId, unit512(9), new Date());
      assert.ok(store.users.delete(t.id, 'ext'));
      assert.equal((store.db.prepare('SELECT COUNT(*) AS n FROM templates').get() as { n: number }).n, 0);
    } finally {
      store.close();
    }
  });

  it('reopening an existing database keeps its data (migrations run once)', function () {
    const a = openStore(dir, undefined);
    const t = a.tenants.create({ name: 't', allowedOrigins: [], livenessMode: 'active' });
    a.close();
    const b = openStore(dir, undefined);
    try {
      assert.equal(b.tenants.get(t.id)?.livenessMode, 'active');
      assert.equal(b.db.pragma('journal_mode', { simple: true }), 'wal');
    } finally {
      b.close();
    }
  });
});

describe('issue 18, finding 7: the activity CSV runs nothing in a spreadsheet', function () {
  const row = (externalUserId: string) => activityCsv([{ id: '1', deviceId: 'front', doorId: 'main', type: 'access_decision', result: 'granted', reason: null, externalUserId, time: '2026-12-03T10:00:00.000Z' }]).split('\r\n')[1];
  const lastCell = (id: string) => row(id).slice('2026-12-03T10:00:00.000Z,front,main,access_decision,granted,,'.length);

  it('a cell holding ; or a tab is quoted (found: `a;=1+1` was left bare, a formula where ; separates cells)', function () {
    assert.equal(lastCell('a;=1+1'), '"a;=1+1"');
    assert.equal(lastCell('a\t=1+1'), '"a\t=1+1"');
    assert.equal(lastCell('a,b'), '"a,b"');
    assert.equal(lastCell('say "hi"'), '"say ""hi"""');
  });

  it('a cell a spreadsheet would run is made text, leading blanks or not', function () {
    for (const formula of ['=HYPERLINK("x")', '+1', '-1+2', '@SUM(A1)', ' =1+1', '\t=1']) {
      const cell = lastCell(formula);
      const text = cell.startsWith('"') ? cell.slice(1, -1).replace(/""/g, '"') : cell;
      assert.equal(text, `'${formula}`, formula);
    }
    assert.equal(lastCell('alice'), 'alice', 'a plain cell stays as it is');
  });
});

describe('issue 18, finding 6: the sign-in throttle (per name and address)', function () {
  it('X-Forwarded-For is read only from a trusted proxy, and names the last address before it', function () {
    const none = trustedProxies([]);
    const proxies = trustedProxies(['10.0.0.1', '192.168.0.0/16', '::1']);
    // found: a client naming its own address would spread its failures over made-up addresses
    assert.equal(clientAddress('203.0.113.9', '198.51.100.1', none), '203.0.113.9', 'no trusted proxy: the header is ignored');
    assert.equal(clientAddress('203.0.113.9', '198.51.100.1', proxies), '203.0.113.9', 'not from a trusted proxy: ignored');
    assert.equal(clientAddress('::ffff:10.0.0.1', '1.1.1.1, 198.51.100.1', proxies), '198.51.100.1', 'the address the proxy saw, not what the client prepended');
    assert.equal(clientAddress('10.0.0.1', '198.51.100.1, 192.168.3.4', proxies), '198.51.100.1', 'through two trusted proxies');
    assert.equal(clientAddress('::1', 'junk', proxies), '::1', 'no address in the header: the proxy');
  });

  it('three failures are free; then the wait doubles from 1 s up to 15 minutes; a day later it is forgotten', function () {
    const now = 1_000_000_000;
    assert.equal(waitAfter(2, now, now), 0);
    assert.equal(waitAfter(3, now, now), 1000);
    assert.equal(waitAfter(4, now, now + 500), 1500);
    assert.equal(waitAfter(30, now, now), 15 * 60_000);
    assert.equal(waitAfter(30, now, now + 25 * 3_600_000), 0);
  });

  it("on a door (one process, in memory): another address is not slowed, and a success clears only its own count", async function () {
    const throttle = new MemorySignInThrottle();
    for (let i = 0; i < 5; i++) await throttle.failed('ada', '203.0.113.9');
    assert.ok((await throttle.wait('ada', '203.0.113.9')) > 0);
    assert.equal(await throttle.wait('ada', '198.51.100.7'), 0);
    await throttle.succeeded('ada', '198.51.100.7');
    assert.ok((await throttle.wait('ada', '203.0.113.9')) > 0);
  });
});

describe("issue 21: the hub's replay guard takes a door's submissions in any order, each once", function () {
  it('submissions and event batches out of order within the window: each taken once; a replay, one far behind, an older boot or a reordered state: refused', function () {
    const guard = new ReplayGuard();
    const at = (n: number, boot = 3) => ({ boot, n });
    // the hub handles a burst concurrently: 2 and 3 are admitted before 1
    assert.deepEqual([5, 7, 6, 2, 3, 1].map((n) => guard.take('k', 'submission', at(n), 3)), [true, true, true, true, true, true]);
    assert.deepEqual([6, 1, 7].map((n) => guard.take('k', 'submission', at(n), 3)), [false, false, false], 'each once');
    assert.equal(guard.take('k', 'submission', at(1000), 3), true);
    assert.equal(guard.take('k', 'submission', at(700), 3), false, 'too far behind the newest');
    assert.equal(guard.take('k', 'submission', at(900), 3), true, 'within the window');
    assert.equal(guard.take('k', 'submission', at(2000, 2), 3), false, 'an older boot');
    assert.equal(guard.take('k', 'submission', at(1, 4), 3), true, 'a new boot starts afresh');
    // a state or a request: only newer than the last
    assert.deepEqual([4, 6, 5, 6].map((n) => guard.take('k', 'state', at(n), 3)), [true, true, false, false]);
    assert.deepEqual([4, 3].map((n) => guard.take('k', 'fetch', at(n), 3)), [true, false]);
  });
});
