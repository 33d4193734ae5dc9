import assert from 'node:assert/strict';
import fs from 'node:fs';
import { similarity } from '../src/biometrics/embedding.ts';
import { loadSettings } from '../src/config/settings.ts';
import { decisionThresholds } from '../src/sessions/decisions.ts';
import { PRIMARY_MODEL } from '../src/biometrics/matchers/index.ts';
import { MAX_CAPTURES } from '../src/store/users.ts';
import { Client } from './support/client.ts';
import { requireShared, shared } from './support/datasets.ts';
import { thrice } from './support/photos.ts';
import { type TestService, startTestService } from './support/service.ts';

/**
 * Templates from door captures (README, "Templates from door captures"): real bbt photos through
 * the API on a real store. A strong identification keeps its capture beside the enrolment template,
 * up to MAX_CAPTURES; the person is then decided by the mean; a deletion takes every template.
 */
describe('templates from door captures: a guarded adaptive update, end to end', function () {
  requireShared(this);
  this.timeout(300_000);
  const people = ['amy', 'howard', 'penny', 'sheldon'];
  const crop = (who: string, k: number) => fs.readFileSync(shared('bbt', who, `${k}.png`));
  let svc: TestService;
  let client: Client;
  let tenantId: string;
  let apiKey: string;

  before(async function () {
    svc = await startTestService();
    const tenant = svc.tenant({ liveness: 'passive' });
    tenantId = tenant.id;
    apiKey = tenant.apiKey;
    client = new Client(svc.url, tenant.apiKey);
    for (const who of people) {
      const { result } = await client.run('enroll', thrice(crop(who, 1)), { externalUserId: who });
      assert.equal(result.status, 'success', `${who}: ${JSON.stringify(result)}`);
    }
  });
  after(async function () {
    const dataDir = svc?.dataDir;
    await svc?.close();
    if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  });

  const rows = (who: string) =>
    svc.service.store.db.prepare('SELECT t.capture FROM templates t JOIN users u ON u.id = t.user_id WHERE u.external_user_id = ? AND t.model = ? AND t.active = 1 ORDER BY t.capture').all(who, PRIMARY_MODEL) as { capture: number }[];
  const adapted = () => svc.service.store.db.prepare(`SELECT external_user_id, reason, score FROM audit_events WHERE type = 'template_adapted' ORDER BY created_at`).all() as { external_user_id: string; reason: string; score: number }[];

  it('strong identifications join the template, capped; the 1:N index holds the mean; nothing joins for a stranger', async function () {
    for (const k of [2, 3, 4]) {
      for (const who of people) {
        const { result } = await client.run('identify', thrice(crop(who, k)));
        assert.deepEqual([result.status, result.external_user_id], ['success', who], `${who} photo ${k}: ${JSON.stringify(result)}`);
      }
    }
    for (const who of people) {
      assert.deepEqual(rows(who).map((r) => r.capture), [0, ...Array.from({ length: MAX_CAPTURES }, (_, i) => i + 1)], `${who}: the enrolment template and ${MAX_CAPTURES} captures, no more`);
      const user = svc.service.store.users.get(tenantId, who)!;
      const mean = svc.service.store.users.templates(user)[PRIMARY_MODEL]!;
      const enrolment = svc.service.store.users.enrolmentTemplates(user)[PRIMARY_MODEL]!;
      assert.ok(similarity(mean, enrolment) < 0.999, 'the mean is not the enrolment template');
      // the index decides by the mean: the person's own score there is the one of the mean
      assert.ok(Math.abs((svc.service.index.of(tenantId).gallery(PRIMARY_MODEL).scoreOf(mean, who) as number) - 1) < 1e-3, `${who}: the index holds the mean`);
    }
    const settings = loadSettings({});
    const t = decisionThresholds(settings.AUTHFACE_TARGET_FPIR, { match: settings.AUTHFACE_MATCH_THRESHOLD, duplicate: settings.AUTHFACE_DUPLICATE_THRESHOLD, margin: settings.AUTHFACE_IDENTIFY_MARGIN });
    const rule = t[PRIMARY_MODEL].identify.rule(people.length).threshold;
    const audit = adapted();
    assert.equal(audit.length, people.length * MAX_CAPTURES, 'each capture kept is audited, and only those');
    for (const a of audit) {
      assert.match(a.reason, new RegExp(`^${PRIMARY_MODEL.replace(/[/.]/g, '\\$&')} capture [12]$`));
      assert.ok(a.score >= rule, `only strong matches join (${a.score} against ${rule})`);
    }
    const stranger = await client.run('identify', thrice(fs.readFileSync(shared('deepface', 'img1.jpg'))));
    assert.equal(stranger.result.status, 'fail', 'a stranger is still kept out');
    assert.equal(adapted().length, audit.length);
  });

  it('a restart loads each person by their mean; deleting a person erases every template, captures included', async function () {
    const before = svc.service.store.users.templates(svc.service.store.users.get(tenantId, 'amy')!)[PRIMARY_MODEL]!;
    const dataDir = svc.dataDir;
    await svc.service.close();
    svc = await startTestService({ AUTHFACE_DATA_DIR: dataDir });
    client = new Client(svc.url, apiKey);
    assert.ok(Math.abs((svc.service.index.of(tenantId).gallery(PRIMARY_MODEL).scoreOf(before, 'amy') as number) - 1) < 1e-3, 'the mean, loaded');
    const deleted = await client.post('/biometry/v1/delete-user', { external_user_id: 'amy' });
    assert.equal(deleted.status, 200, JSON.stringify(deleted.body));
    const left = svc.service.store.db.prepare(`SELECT COUNT(*) AS n FROM templates t JOIN users u ON u.id = t.user_id WHERE u.tenant_id = ? AND u.deleted_at IS NOT NULL`).get(tenantId) as { n: number };
    assert.equal(left.n, 0, 'no template of the deleted person, of any slot');
    assert.equal(svc.service.index.of(tenantId).modelOf('amy'), undefined);
    const { result } = await client.run('identify', thrice(crop('amy', 5)));
    assert.notEqual(result.external_user_id, 'amy');
  });
});
