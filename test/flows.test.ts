import assert from 'node:assert/strict';
import { resultFinal, resultOpen, sessionCreated, frameFeedback, captureFinished, captureSession } from '../src/api/schemas.ts';
import { loadSettings } from '../src/config/settings.ts';
import { Client, assertShape } from './support/client.ts';
import { type Photos, photos, thrice } from './support/photos.ts';
import { type TestService, startTestService } from './support/service.ts';

describe('biometric flows end to end through the capture API', function () {
  let svc: TestService;
  let api: Client;
  let img: Photos;
  let tenantId: string;

  before(async function () {
    img = await photos();
    console.log(`      (photos: ${img.source})`);
    svc = await startTestService();
    const tenant = svc.tenant();
    tenantId = tenant.id;
    api = new Client(svc.url, tenant.apiKey);
  });
  after(() => svc.close());

  it('enrolls a person, then blocks the same face under another id as a conflict', async function () {
    const enrolled = await api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' });
    assertShape(captureFinished, enrolled.completion.body);
    const r = assertShape(resultFinal, enrolled.result);
    assert.equal(r.status, 'success');
    assert.equal(r.result, 'success');
    assert.equal(r.reason, null);
    assert.equal(r.external_user_id, 'alice');
    assert.equal(r.flow, 'enroll');
    assert.equal(r.state, enrolled.clientState);
    assert.equal(enrolled.completion.body.redirect_to, `https://app.example.com/callback?client_state=${enrolled.clientState}`);

    const dup = await api.run('enroll', thrice(img.personA[1]), { externalUserId: 'alice-second-account' });
    const d = assertShape(resultFinal, dup.result);
    assert.equal(d.status, 'fail');
    assert.equal(d.reason, 'conflict');
    assert.ok(d.score !== null && d.score >= loadSettings({}).AUTHFACE_DUPLICATE_THRESHOLD, `conflict score ${d.score}`);
    const listed = await api.post('/biometry/v1/list-users', {});
    assert.deepEqual((listed.body.users as { external_user_id: string }[]).map((u) => u.external_user_id), ['alice']);
  });

  it('refuses to enroll an id that is already enrolled', async function () {
    const again = await api.run('enroll', thrice(img.personB), { externalUserId: 'alice' });
    assert.equal(again.result.status, 'fail');
    assert.equal(again.result.reason, 'already_enrolled');
  });

  it('verifies the same person (another photo) and rejects a different person', async function () {
    const same = await api.run('verify', thrice(img.personA[2]), { externalUserId: 'alice' });
    const s = assertShape(resultFinal, same.result);
    assert.equal(s.status, 'success', JSON.stringify(same.result));
    assert.ok(s.score !== null && s.score >= loadSettings({}).AUTHFACE_MATCH_THRESHOLD);
    assert.match(String(s.score), /^\d(\.\d{1,5})?$/);

    const other = await api.run('verify', thrice(img.personB), { externalUserId: 'alice' });
    const o = assertShape(resultFinal, other.result);
    assert.equal(o.status, 'fail');
    assert.equal(o.reason, 'below_threshold');
    assert.ok(o.score !== null && o.score < loadSettings({}).AUTHFACE_MATCH_THRESHOLD);
    assert.equal(o.external_user_id, 'alice');
  });

  it('verify of an unknown user fails with user_not_found', async function () {
    const r = await api.run('verify', thrice(img.personA[0]), { externalUserId: 'nobody' });
    assert.equal(r.result.reason, 'user_not_found');
  });

  it('identifies an enrolled person 1:N and does not identify a stranger', async function () {
    await api.run('enroll', thrice(img.personB), { externalUserId: 'bob' });
    const found = await api.run('identify', thrice(img.personA[1]));
    const f = assertShape(resultFinal, found.result);
    assert.equal(f.status, 'success');
    assert.equal(f.external_user_id, 'alice');

    const stranger = await api.run('identify', thrice(img.personC));
    const s = assertShape(resultFinal, stranger.result);
    assert.equal(s.status, 'fail');
    assert.equal(s.reason, 'not_identified');
    assert.equal(s.external_user_id, null);
  });

  it('update_embedding: a different face cannot replace a template; the same person gets a new version', async function () {
    const impostor = await api.run('update_embedding', thrice(img.personC), { externalUserId: 'alice' });
    assert.equal(impostor.result.reason, 'below_threshold');
    // someone else's face (bob is enrolled) cannot be moved onto alice either: 1:1 fails first
    const bobsFace = await api.run('update_embedding', thrice(img.personB), { externalUserId: 'alice' });
    assert.equal(bobsFace.result.status, 'fail');

    const updated = await api.run('update_embedding', [img.personA[1], img.personA[2], img.personA[1]], { externalUserId: 'alice' });
    assert.equal(updated.result.status, 'success', JSON.stringify(updated.result));
    const user = await api.post('/biometry/v1/get-user', { external_user_id: 'alice' });
    const templates = (user.body.user as { templates: { version: number; active: boolean }[] }).templates;
    assert.deepEqual(templates.map((t) => [t.version, t.active]), [[1, false], [2, true]]);
    assert.equal((user.body.user as { version: number }).version, 2);
    // and the new template still matches
    const verify = await api.run('verify', thrice(img.personA[0]), { externalUserId: 'alice' });
    assert.equal(verify.result.status, 'success');
  });

  it('delete-user erases the user: identify no longer finds them, the id can enroll again', async function () {
    const del = await api.post('/biometry/v1/delete-user', { external_user_id: 'alice' });
    assert.equal(del.status, 200);
    assert.match(String(del.body.event_id), /^evt_/);
    const gone = await api.post('/biometry/v1/get-user', { external_user_id: 'alice' });
    assert.equal(gone.status, 404);
    const identify = await api.run('identify', thrice(img.personA[0]));
    assert.equal(identify.result.status, 'fail');
    assert.equal(identify.result.reason, 'not_identified');
    // no template (active or historical) remains in the database
    const rows = svc.service.store.db
      .prepare("SELECT COUNT(*) AS n FROM templates t JOIN users u ON u.id = t.user_id WHERE u.external_user_id = 'alice'")
      .get() as { n: number };
    assert.equal(rows.n, 0);
    const again = await api.run('enroll', thrice(img.personA[0]), { externalUserId: 'alice' });
    assert.equal(again.result.status, 'success');
  });

  it('a frame with several faces or none is refused frame by frame, and the session fails with that reason', async function () {
    const group = await api.run('enroll', [img.group], { externalUserId: 'group-shot' });
    assertShape(frameFeedback, group.feedback[0]);
    assert.equal(group.feedback[0].accepted, false);
    assert.deepEqual(group.feedback[0].problems, ['multiple_faces']);
    assert.equal(group.result.reason, 'multiple_faces');

    const empty = await api.run('identify', [img.noFace]);
    assert.equal(empty.feedback[0].face_found, false);
    assert.deepEqual(empty.feedback[0].problems, ['no_face']);
    assert.equal(empty.result.reason, 'no_face');

    const nothing = await api.run('identify', []);
    assert.equal(nothing.result.reason, 'no_face');
  });

  it('frames of two different people in one session fail it (liveness_failed)', async function () {
    const r = await api.run('identify', [img.personB, img.personC]);
    assert.equal(r.feedback[0].accepted, true);
    assert.deepEqual(r.feedback[1].problems, ['different_face']);
    assert.equal(r.result.reason, 'liveness_failed');
  });

  it('polls pending → in_progress → final, and the capture session answers its contract', async function () {
    const { clientState, token } = await api.start('verify', { externalUserId: 'bob' });
    const pending = assertShape(resultOpen, (await api.result(clientState)).body);
    assert.deepEqual(pending, { success: true, state: clientState, flow: 'verify', status: 'pending', external_user_id: 'bob' });
    const capture = api.capture(token);
    const view = assertShape(captureSession, (await capture.session()).body);
    assert.equal(view.status, 'in_progress');
    assert.equal(view.flow, 'verify');
    assert.equal((await api.result(clientState)).body.status, 'in_progress');
    for (let i = 1; i <= 3; i++) {
      const fb = await capture.frame(img.personB);
      assert.equal(fb.body.accepted, true);
      assert.deepEqual(fb.body.progress, { accepted_frames: i, required_frames: 3 });
    }
    await capture.complete();
    const final = assertShape(resultFinal, (await api.result(clientState)).body);
    assert.equal(final.status, 'success');
    assert.match(final.completed_at, /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$/);
    // no internal identifier leaks into the result
    const internal = svc.service.store.sessions.byClientState(tenantId, clientState);
    assert.ok(internal);
    assert.ok(!JSON.stringify(final).includes(internal.id));
    assert.ok(!JSON.stringify(final).includes(tenantId));
  });

  it('every finished session has its audit event, without biometric data', function () {
    const events = svc.service.store.audit.list(tenantId, 1000);
    const finished = svc.service.store.db
      .prepare("SELECT event_id, flow, status, reason FROM sessions WHERE tenant_id = ? AND status NOT IN ('pending', 'in_progress')")
      .all(tenantId) as { event_id: string; flow: string; status: string; reason: string | null }[];
    assert.ok(finished.length >= 10);
    for (const s of finished) {
      const e = events.find((x) => x.id === s.event_id);
      assert.ok(e, `audit event ${s.event_id}`);
      assert.equal(e.flow, s.flow);
      assert.equal(e.reason, s.reason);
      assert.equal(e.result, s.status === 'success' ? 'success' : 'fail');
    }
    const columns = (svc.service.store.db.prepare('PRAGMA table_info(audit_events)').all() as { name: string }[]).map((c) => c.name);
    assert.ok(!columns.some((c) => /embedding|image|template|cipher/.test(c)));
  });

  it('cancel ends the session as fail/cancelled and still redirects', async function () {
    const { clientState, token } = await api.start('identify');
    const c = await api.capture(token).cancel();
    assertShape(captureFinished, c.body);
    assert.equal(c.body.status, 'fail');
    assert.equal(c.body.reason, 'cancelled');
    assert.equal(c.body.redirect_to, `https://app.example.com/callback?client_state=${clientState}`);
    assert.equal((await api.result(clientState)).body.reason, 'cancelled');
  });

  it('the 1:N index is rebuilt from the database when the service restarts', async function () {
    const restarted = await startTestService({ AUTHFACE_DATA_DIR: svc.dataDir });
    try {
      const client = new Client(restarted.url, api.apiKey);
      const found = await client.run('identify', thrice(img.personB));
      assert.equal(found.result.status, 'success');
      assert.equal(found.result.external_user_id, 'bob');
    } finally {
      await restarted.close(); // leaves the data directory to the first service
    }
  });

  it('session creation answers exactly {success, client_state, biometry_url} under PUBLIC_URL', async function () {
    const reply = await api.post('/biometry/v1/identify', { client_state: '6f1c1a52-6c44-4e8e-9a57-0d1b77e2a6a1', redirect_url: 'https://app.example.com/cb' });
    const body = assertShape(sessionCreated, reply.body);
    const url = new URL(body.biometry_url);
    assert.equal(url.pathname, '/capture');
    assert.match(url.searchParams.get('t') as string, /^[A-Za-z0-9_-]{43}$/);
  });
});
