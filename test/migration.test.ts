import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DLIB_RESNET, MOBILEFACENET, PRIMARY_MODEL } from '../src/biometrics/matchers/index.ts';
import { retireTemplates, templateStatus } from '../src/cli/templates.ts';
import { authface, cliIn, serve, stop } from './support/cli.ts';
import { Client } from './support/client.ts';
import { requireShared, shared } from './support/datasets.ts';
import { previousRelease } from './support/previous-release.ts';
import { thrice } from './support/photos.ts';
import { type TestService, startTestService } from './support/service.ts';

/**
 * The move from dlib's descriptor to MobileFaceNet with nobody enrolling again. The data directory
 * is made by the previous release itself (support/previous-release.ts), and its `authface serve` enrols eight
 * people of bbt (five face crops each) through the API. Then this release opens the directory.
 */
describe('moving to a new face model without re-enrolment (a data directory of the previous release)', function () {
  requireShared(this);
  this.timeout(600_000);
  const people = ['amy', 'bernadette', 'howard', 'leonard', 'penny', 'raj', 'sheldon', 'stuart'];
  const crop = (who: string, k: number) => fs.readFileSync(shared('bbt', who, `${k}.png`));
  let dataDir: string;
  let release: string;
  let tenant: { id: string; apiKey: string };
  let svc: TestService | undefined;

  const modelsHeld = (s: TestService, who: string) =>
    (s.service.store.db.prepare('SELECT t.model FROM templates t JOIN users u ON u.id = t.user_id WHERE u.external_user_id = ? AND t.active = 1 ORDER BY t.model').all(who) as { model: string }[]).map((r) => r.model);
  const identify = async (s: TestService, photo: Buffer) => (await new Client(s.url, tenant.apiKey).run('identify', thrice(photo))).result;

  before(async function () {
    release = previousRelease();
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-upgrade-'));
    const env = { AUTHFACE_DATA_DIR: dataDir };
    const created = JSON.parse((await authface(['tenant', 'create', '--name', 'site', '--allowed-origin', 'https://app.example.com', '--liveness', 'passive'], env, { cli: cliIn(release) })).stdout);
    tenant = { id: created.tenant_id, apiKey: created.api_key };
    const old = await serve(env, { cli: cliIn(release) });
    try {
      const client = new Client(old.url, tenant.apiKey);
      for (const who of people) {
        const { result } = await client.run('enroll', thrice(crop(who, 1)), { externalUserId: who });
        assert.equal(result.status, 'success', `${who} enrolled by the previous release: ${JSON.stringify(result)}`);
      }
    } finally {
      await stop(old.child);
    }
  });

  after(async function () {
    await svc?.close();
    for (const dir of [dataDir, release]) if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('after the upgrade everyone still opens their door (decided by dlib); one capture each gives everyone the new template; then the old templates are retired', async function () {
    svc = await startTestService({ AUTHFACE_DATA_DIR: dataDir });
    const s = svc;
    for (const who of people) assert.deepEqual(modelsHeld(s, who), [DLIB_RESNET.id], `${who}: the previous release stored a dlib template only`);
    assert.deepEqual(templateStatus(s.service.store).map((t) => [t.people, t.by_model]), [[8, { [DLIB_RESNET.id]: 8 }]]);
    assert.deepEqual(s.service.modelsFor(tenant.id), [MOBILEFACENET.id, DLIB_RESNET.id], 'while someone is decided by dlib, captures are described by both models');

    // 1. the first capture of each person after the upgrade: identified by dlib, and migrated
    for (const [i, who] of people.entries()) {
      const result = await identify(s, crop(who, 2));
      assert.deepEqual([result.status, result.external_user_id], ['success', who], `${who} after the upgrade: ${JSON.stringify(result)}`);
      assert.ok((result.score as number) >= DLIB_RESNET.matchThreshold, `decided on dlib's scale (${result.score})`);
      assert.deepEqual(modelsHeld(s, who), [DLIB_RESNET.id, MOBILEFACENET.id].sort(), `${who} now holds the new template too`);
      assert.equal(s.service.index.of(tenant.id).modelOf(who), PRIMARY_MODEL);
      assert.equal(templateStatus(s.service.store)[0].by_model[PRIMARY_MODEL], i + 1);
    }
    const audit = s.service.store.db.prepare(`SELECT COUNT(*) AS n FROM audit_events WHERE type = 'template_migrated'`).get() as { n: number };
    assert.equal(audit.n, people.length, 'each migration is audited');
    assert.match(templateStatus(s.service.store)[0].progress, /^8 of 8 people have the MobileFaceNet template$/);
    assert.deepEqual(s.service.modelsFor(tenant.id), [MOBILEFACENET.id], 'a complete tenant no longer runs dlib');
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(metrics, new RegExp(`authface_people_by_model\\{tenant="${tenant.id}",model="${PRIMARY_MODEL}"\\} 8`));
    assert.match(metrics, /authface_templates_migrated_total 8/);

    // 2. the next capture is decided by the new model (its own score scale), and the same people
    for (const who of people) {
      const result = await identify(s, crop(who, 3));
      assert.deepEqual([result.status, result.external_user_id], ['success', who], `${who} by MobileFaceNet: ${JSON.stringify(result)}`);
      assert.ok((result.score as number) < DLIB_RESNET.matchThreshold && (result.score as number) >= MOBILEFACENET.matchThreshold, `on MobileFaceNet's scale (${result.score})`);
    }

    // 3. the operator retires the old templates: nobody is locked out, and nothing of dlib is left
    const retired = retireTemplates(s.service.store, s.service.store.tenants.get(tenant.id)!);
    assert.deepEqual(retired.retired, [{ model: DLIB_RESNET.id, people_retired: 8, people_kept: 0 }]);
    const left = s.service.store.db.prepare('SELECT COUNT(*) AS n FROM templates WHERE model = ?').get(DLIB_RESNET.id) as { n: number };
    assert.equal(left.n, 0, 'no dlib template, active or history, is left');
    for (const who of people) {
      const result = await identify(s, crop(who, 4));
      assert.deepEqual([result.status, result.external_user_id], ['success', who], `${who} after the retirement`);
    }
    // a stranger is still kept out
    const stranger = await identify(s, fs.readFileSync(shared('deepface', 'img1.jpg')));
    assert.equal(stranger.status, 'fail');
    // a restart loads the new templates only
    await s.service.close();
    svc = await startTestService({ AUTHFACE_DATA_DIR: dataDir });
    assert.deepEqual(svc.service.index.of(tenant.id).counts(), { [PRIMARY_MODEL]: 8 });
    assert.deepEqual(svc.service.modelsFor(tenant.id), [MOBILEFACENET.id]);
  });
});
