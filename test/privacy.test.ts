import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { similarity } from '../src/biometrics/embedding.ts';
import { MOBILEFACENET, PRIMARY_MODEL } from '../src/biometrics/matchers/index.ts';
import { Client } from './support/client.ts';
import { ROOT } from './support/datasets.ts';
import { type Photos, photos, thrice } from './support/photos.ts';
import { type TestService, sharedAnalyzer, startTestService } from './support/service.ts';

/** Every regular file below a directory, with its bytes. */
function filesUnder(dir: string): { file: string; bytes: Buffer }[] {
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => path.join(d.parentPath, d.name))
    .map((file) => ({ file, bytes: fs.readFileSync(file) }));
}

const IMAGE_SIGNATURES = [
  Buffer.from([0xff, 0xd8, 0xff]), // JPEG
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), // PNG
  Buffer.from('WEBPVP8'),
];

describe('privacy: no image or frame is ever written, embeddings only encrypted', function () {
  let svc: TestService;
  let img: Photos;
  let apiKey: string;
  let tokens: string[];
  let tmpBefore: Set<string>;
  let cwdBefore: Set<string>;

  before(async function () {
    img = await photos();
    // what exists before this suite's flows run (other suites may have written test artifacts)
    tmpBefore = new Set(fs.readdirSync(os.tmpdir()));
    cwdBefore = new Set(fs.readdirSync(ROOT));
    svc = await startTestService();
    apiKey = svc.tenant().apiKey;
    const api = new Client(svc.url, apiKey);
    tokens = [];
    const runs = [
      await api.run('enroll', [img.personA[0], img.personA[1], img.personA[0]], { externalUserId: 'alice' }),
      await api.run('verify', thrice(img.personA[2]), { externalUserId: 'alice' }),
      await api.run('identify', [img.personB, img.group, img.noFace]),
      await api.run('update_embedding', thrice(img.personA[1]), { externalUserId: 'alice' }),
    ];
    for (const r of runs) tokens.push(r.token);
    assert.equal(runs[0].result.status, 'success');
    // a broken upload as well: error paths must not write or echo the image either
    const { token } = await api.start('identify');
    await api.capture(token).frame(img.personB.subarray(0, 5000));
  });
  after(() => svc.close());

  it('the data directory holds only the database, the key file and the pid file', function () {
    const names = fs.readdirSync(svc.dataDir).sort();
    for (const name of names) assert.match(name, /^(authface\.db(-wal|-shm)?|master\.key|authface\.pid)$/);
    assert.equal((fs.statSync(path.join(svc.dataDir, 'master.key')).mode & 0o777).toString(8), '600');
  });

  it('no stored byte sequence is an image or a piece of an uploaded photo', function () {
    svc.service.store.db.pragma('wal_checkpoint(PASSIVE)');
    const stored = filesUnder(svc.dataDir);
    const uploaded = [img.personA[0], img.personA[1], img.personA[2], img.personB, img.group];
    for (const { file, bytes } of stored) {
      for (const sig of IMAGE_SIGNATURES) assert.equal(bytes.indexOf(sig), -1, `${file} contains an image signature`);
      for (const photo of uploaded) {
        for (const at of [0.25, 0.5, 0.75]) {
          const piece = photo.subarray(Math.floor(photo.length * at), Math.floor(photo.length * at) + 48);
          assert.equal(bytes.indexOf(piece), -1, `${file} contains bytes of an uploaded photo`);
        }
      }
    }
  });

  it('templates are stored encrypted: the plaintext embedding appears nowhere on disk', async function () {
    const user = svc.service.store.users.get(svc.service.store.tenants.findByApiKey(apiKey)!.id, 'alice')!;
    const templates = svc.service.store.users.templates(user);
    assert.deepEqual(Object.keys(templates), [PRIMARY_MODEL], 'a new tenant enrols with the new model only');
    const embedding = templates[PRIMARY_MODEL]!;
    assert.equal(embedding.length, 512);
    // sanity: it really is the embedding of alice's face
    const fresh = await (await sharedAnalyzer()).analyze(new Uint8Array(img.personA[1]), { mode: 'capture', models: [PRIMARY_MODEL] });
    const score = similarity(embedding, fresh.embeddings[PRIMARY_MODEL]!);
    assert.ok(score >= MOBILEFACENET.matchThreshold, `stored template matches the face (${score})`);
    svc.service.store.db.pragma('wal_checkpoint(PASSIVE)');
    const plain = Buffer.from(embedding.buffer, embedding.byteOffset, 32);
    for (const { file, bytes } of filesUnder(svc.dataDir)) assert.equal(bytes.indexOf(plain), -1, `${file} holds plaintext embedding bytes`);
  });

  it('a tampered template is refused rather than matched, and its user flagged for re-enrolment', function () {
    const db = svc.service.store.db;
    const row = db.prepare('SELECT id, user_id, ciphertext FROM templates WHERE active = 1 LIMIT 1').get() as { id: string; user_id: string; ciphertext: Buffer };
    const flipped = Buffer.from(row.ciphertext);
    flipped[3] ^= 0xff;
    db.prepare('UPDATE templates SET ciphertext = ? WHERE id = ?').run(flipped, row.id);
    try {
      const before = svc.service.store.users.needingReenrolment().length;
      const usable = svc.service.store.users.activeTemplates();
      assert.equal(usable.length, 0, 'the tampered template is not used');
      assert.equal(svc.service.store.users.needingReenrolment().length, before + 1);
    } finally {
      db.prepare('UPDATE templates SET ciphertext = ? WHERE id = ?').run(row.ciphertext, row.id);
      db.prepare('UPDATE users SET reenrolment_reason = NULL WHERE id = ?').run(row.user_id);
    }
  });

  it('logs hold no API key, capture token, embedding or image data', function () {
    const logs = svc.logs();
    assert.ok(logs.includes('session finished'), 'the service did log');
    assert.ok(!logs.includes(apiKey));
    for (const token of tokens) assert.ok(!logs.includes(token), 'a capture token was logged');
    assert.ok(!/"embedding"\s*:/.test(logs), 'an embedding field was logged');
    assert.ok(!/(-?\d\.\d{3,},\s*){16}/.test(logs), 'a vector of numbers was logged');
    assert.ok(!logs.includes(img.personB.subarray(100, 140).toString('base64')));
    assert.ok(!/\/9j\/|iVBORw0KGgo/.test(logs), 'base64 image data in the logs');
  });

  it('nothing new appears in the temp or project directory while frames are analysed', function () {
    // onnxruntime-node's library opens an empty /tmp/mat-debug-<pid>.log when the process makes its
    // first session (a debug sink of its own; nothing is ever written to it): allowed only empty
    const ortSink = `mat-debug-${process.pid}.log`;
    const newTmp = fs.readdirSync(os.tmpdir()).filter((f) => !tmpBefore.has(f) && !f.startsWith('authface-test-') && !(f === ortSink && fs.statSync(path.join(os.tmpdir(), f)).size === 0));
    assert.deepEqual(newTmp, []);
    const newInRoot = fs.readdirSync(ROOT).filter((f) => !cwdBefore.has(f));
    assert.deepEqual(newInRoot, []);
  });
});
