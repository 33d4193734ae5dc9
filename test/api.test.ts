import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { captureSession, errorResponse, frameFeedback, userDeleted, userDetails, userList } from '../src/api/schemas.ts';
import { Client, assertShape } from './support/client.ts';
import { type Photos, photos, thrice } from './support/photos.ts';
import { type TestService, startTestService } from './support/service.ts';

const uuid = () => crypto.randomUUID();

describe('/biometry/v1 contract and input validation', function () {
  let svc: TestService;
  let api: Client;
  let img: Photos;

  before(async function () {
    img = await photos();
    svc = await startTestService({ AUTHFACE_MAX_IMAGE_BYTES: String(4 * 1024 * 1024) });
    api = new Client(svc.url, svc.tenant({ origins: ['https://app.example.com', 'http://localhost:3000'] }).apiKey);
  });
  after(() => svc.close());

  describe('authentication', function () {
    for (const [name, header] of [
      ['no Authorization header', undefined],
      ['a wrong key', 'Bearer afk_wrong'],
      ['a key without the Bearer scheme', 'afk_x'],
    ] as const) {
      it(`answers 401 with ${name}`, async function () {
        const res = await fetch(`${svc.url}/biometry/v1/list-users`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(header ? { authorization: header } : {}) },
          body: '{}',
        });
        assert.equal(res.status, 401);
        assert.equal(res.headers.get('www-authenticate'), 'Bearer');
        const body = assertShape(errorResponse, await res.json());
        assert.equal(body.error.code, 'invalid_api_key');
      });
    }

    it('a revoked key stops working at once', async function () {
      const t = svc.tenant();
      const client = new Client(svc.url, t.apiKey);
      assert.equal((await client.post('/biometry/v1/list-users', {})).status, 200);
      assert.ok(svc.service.store.tenants.revokeKey(t.keyId));
      assert.equal((await client.post('/biometry/v1/list-users', {})).status, 401);
    });

    it('stores API keys only as hashes', function () {
      const t = svc.tenant();
      const rows = svc.service.store.db.prepare('SELECT * FROM api_keys').all() as Record<string, unknown>[];
      assert.ok(rows.length > 0);
      assert.ok(!JSON.stringify(rows).includes(t.apiKey.slice(4)));
      for (const row of rows) for (const value of Object.values(row)) {
        if (Buffer.isBuffer(value)) assert.ok(!value.toString('latin1').includes(t.apiKey));
      }
    });
  });

  describe('bad input is answered with a clear JSON 4xx and writes nothing', function () {
    const enrollBody = () => ({ client_state: uuid(), redirect_url: 'https://app.example.com/cb', external_user_id: 'x1' });
    const cases: { name: string; path: string; body: () => unknown; raw?: boolean; type?: string; status: number; code: string }[] = [
      { name: 'malformed JSON', path: 'enroll', body: () => '{"client_state": ', raw: true, status: 400, code: 'invalid_json' },
      { name: 'a JSON array', path: 'enroll', body: () => '[1,2]', raw: true, status: 400, code: 'validation_error' },
      { name: 'an empty body', path: 'enroll', body: () => '', raw: true, status: 400, code: 'invalid_json' },
      { name: 'a form body', path: 'enroll', body: () => 'client_state=x', raw: true, type: 'application/x-www-form-urlencoded', status: 415, code: 'unsupported_media_type' },
      { name: 'client_state missing', path: 'enroll', body: () => ({ ...enrollBody(), client_state: undefined }), status: 400, code: 'validation_error' },
      { name: 'client_state not a UUID', path: 'enroll', body: () => ({ ...enrollBody(), client_state: 'abc' }), status: 400, code: 'validation_error' },
      { name: 'client_state a UUID v1', path: 'enroll', body: () => ({ ...enrollBody(), client_state: 'c232ab00-9414-11ec-b3c8-9f6bdeced846' }), status: 400, code: 'validation_error' },
      { name: 'client_state a number', path: 'enroll', body: () => ({ ...enrollBody(), client_state: 42 }), status: 400, code: 'validation_error' },
      { name: 'external_user_id missing on enroll', path: 'enroll', body: () => ({ ...enrollBody(), external_user_id: undefined }), status: 400, code: 'validation_error' },
      { name: 'external_user_id missing on verify', path: 'verify', body: () => ({ ...enrollBody(), external_user_id: undefined }), status: 400, code: 'validation_error' },
      { name: 'external_user_id missing on update_embedding', path: 'update_embedding', body: () => ({ ...enrollBody(), external_user_id: undefined }), status: 400, code: 'validation_error' },
      { name: 'external_user_id empty', path: 'enroll', body: () => ({ ...enrollBody(), external_user_id: '' }), status: 400, code: 'validation_error' },
      { name: 'external_user_id with a control character', path: 'enroll', body: () => ({ ...enrollBody(), external_user_id: 'a\u0000b' }), status: 400, code: 'validation_error' },
      { name: 'external_user_id too long', path: 'enroll', body: () => ({ ...enrollBody(), external_user_id: 'x'.repeat(129) }), status: 400, code: 'validation_error' },
      { name: 'external_user_id on identify', path: 'identify', body: () => enrollBody(), status: 400, code: 'validation_error' },
      { name: 'an unknown field', path: 'enroll', body: () => ({ ...enrollBody(), admin: true }), status: 400, code: 'validation_error' },
      { name: 'redirect_url not a URL', path: 'enroll', body: () => ({ ...enrollBody(), redirect_url: 'not a url' }), status: 400, code: 'invalid_redirect_url' },
      { name: 'redirect_url of a foreign origin', path: 'enroll', body: () => ({ ...enrollBody(), redirect_url: 'https://evil.example.net/cb' }), status: 400, code: 'redirect_origin_not_allowed' },
      { name: 'redirect_url with the allowed host on another port', path: 'enroll', body: () => ({ ...enrollBody(), redirect_url: 'https://app.example.com:8443/cb' }), status: 400, code: 'redirect_origin_not_allowed' },
      { name: 'redirect_url over plain http', path: 'enroll', body: () => ({ ...enrollBody(), redirect_url: 'http://app.example.com/cb' }), status: 400, code: 'insecure_redirect_url' },
      { name: 'redirect_url with javascript:', path: 'enroll', body: () => ({ ...enrollBody(), redirect_url: 'javascript:alert(1)' }), status: 400, code: 'insecure_redirect_url' },
      { name: 'redirect_url with credentials', path: 'enroll', body: () => ({ ...enrollBody(), redirect_url: 'https://u:p@app.example.com/cb' }), status: 400, code: 'invalid_redirect_url' },
      { name: 'a huge body', path: 'enroll', body: () => ({ ...enrollBody(), external_user_id: 'x'.repeat(200_000) }), status: 413, code: 'payload_too_large' },
      { name: 'list-users limit 0', path: 'list-users', body: () => ({ limit: 0 }), status: 400, code: 'validation_error' },
      { name: 'list-users limit 1001', path: 'list-users', body: () => ({ limit: 1001 }), status: 400, code: 'validation_error' },
      { name: 'list-users limit as a string', path: 'list-users', body: () => ({ limit: '10' }), status: 400, code: 'validation_error' },
      { name: 'list-users negative offset', path: 'list-users', body: () => ({ offset: -1 }), status: 400, code: 'validation_error' },
      { name: 'list-users fractional limit', path: 'list-users', body: () => ({ limit: 1.5 }), status: 400, code: 'validation_error' },
      { name: 'get-user without an id', path: 'get-user', body: () => ({}), status: 400, code: 'validation_error' },
      { name: 'result with a bad client_state', path: 'result', body: () => ({ client_state: 'nope' }), status: 400, code: 'validation_error' },
    ];
    for (const c of cases) {
      it(`${c.name} → ${c.status} ${c.code}`, async function () {
        const before = svc.service.store.db.prepare('SELECT COUNT(*) AS n FROM sessions').get() as { n: number };
        const body = c.body();
        const res = await fetch(`${svc.url}/biometry/v1/${c.path}`, {
          method: 'POST',
          headers: { 'content-type': c.type ?? 'application/json', authorization: `Bearer ${api.apiKey}` },
          body: c.raw ? (body as string) : JSON.stringify(body),
        });
        assert.equal(res.status, c.status);
        const reply = assertShape(errorResponse, await res.json());
        assert.equal(reply.error.code, c.code);
        assert.ok(reply.error.message.length > 0);
        assert.ok(!/\bat \S+ \(/.test(reply.error.message), 'no stack trace');
        const after = svc.service.store.db.prepare('SELECT COUNT(*) AS n FROM sessions').get() as { n: number };
        assert.equal(after.n, before.n, 'no session was written');
      });
    }

    it('allows http redirects on localhost when the tenant allows that origin', async function () {
      const res = await api.post('/biometry/v1/enroll', { ...enrollBody(), redirect_url: 'http://localhost:3000/done' });
      assert.equal(res.status, 200);
    });

    it('reusing a client_state in the tenant is 409 and keeps the first session', async function () {
      const body = enrollBody();
      assert.equal((await api.post('/biometry/v1/enroll', body)).status, 200);
      const again = await api.post('/biometry/v1/verify', { ...body, external_user_id: 'other' });
      assert.equal(again.status, 409);
      assert.equal(again.body.success, false);
      assert.equal((again.body.error as { code: string }).code, 'client_state_in_use');
      assert.equal((await api.result(body.client_state)).body.flow, 'enroll');
    });

    it('unknown client_state on /result is 404', async function () {
      const res = await api.result(uuid());
      assert.equal(res.status, 404);
      assert.equal((res.body.error as { code: string }).code, 'session_not_found');
    });

    it('an unknown endpoint is a JSON 404 and a wrong method a JSON 405', async function () {
      const missing = await api.post('/biometry/v1/nope', {});
      assert.equal(missing.status, 404);
      assertShape(errorResponse, missing.body);
      const wrong = await fetch(`${svc.url}/biometry/v1/enroll`, { headers: { authorization: `Bearer ${api.apiKey}` } });
      assert.equal(wrong.status, 405);
      assertShape(errorResponse, await wrong.json());
    });
  });

  describe('frame uploads', function () {
    let token: string;
    beforeEach(async function () {
      token = (await api.start('identify')).token;
    });

    const upload = (body: Uint8Array | string, type: string) =>
      fetch(`${svc.url}/capture/v1/frames`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': type }, body });

    it('a GIF is 415, whatever content type it claims', async function () {
      const gif = Buffer.from('R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7', 'base64');
      for (const type of ['image/jpeg', 'image/gif']) {
        const res = await upload(gif, type);
        assert.equal(res.status, 415);
        assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'unsupported_media_type');
      }
    });

    it('text sent as an image is 415', async function () {
      const res = await upload('hello, not an image', 'image/png');
      assert.equal(res.status, 415);
    });

    it('a JSON body is 415', async function () {
      const res = await upload('{}', 'application/json');
      assert.equal(res.status, 415);
    });

    it('a truncated JPEG is 400 invalid_image', async function () {
      const res = await upload(img.personB.subarray(0, 2000), 'image/jpeg');
      assert.equal(res.status, 400);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'invalid_image');
    });

    it('an image over the byte limit is 413', async function () {
      const big = Buffer.concat([img.personB, Buffer.alloc(4 * 1024 * 1024)]);
      const res = await upload(big, 'image/jpeg');
      assert.equal(res.status, 413);
    });

    it('an empty body is 400', async function () {
      const res = await upload(new Uint8Array(0), 'image/jpeg');
      assert.equal(res.status, 400);
    });

    it('a bad upload does not end the session: a good frame still counts', async function () {
      await upload('junk', 'image/png');
      const res = await upload(img.personB, 'image/jpeg');
      assert.equal(res.status, 200);
      assert.equal(((await res.json()) as { accepted: boolean }).accepted, true);
    });
  });

  describe('active liveness over the capture API', function () {
    it('draws a challenge per session, keeps it across reloads, and fails a still photo with liveness_failed', async function () {
      const client = new Client(svc.url, svc.tenant({ liveness: 'active' }).apiKey);
      const { token, clientState } = await client.start('identify');
      const capture = client.capture(token);
      const first = assertShape(captureSession, (await capture.session()).body);
      assert.equal(first.liveness.mode, 'active');
      const challenge = first.liveness.challenge!;
      assert.ok(challenge.steps.length >= 2 && challenge.steps.length <= 3);
      assert.equal(challenge.colors.length, 6);
      assert.deepEqual(assertShape(captureSession, (await capture.session()).body).liveness.challenge, challenge, 'the same challenge on reload');
      // a still photo: accepted as a face, but it never moves, and its colour never follows the screen
      for (let phase = 0; phase < 6; phase++) {
        const res = await fetch(`${svc.url}/capture/v1/frames`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'image/jpeg', 'x-light-phase': String(phase) },
          body: img.personB,
        });
        const fb = assertShape(frameFeedback, await res.json());
        assert.equal(fb.liveness.steps_done, 0);
        assert.equal(fb.liveness.steps_total, challenge.steps.length);
        assert.equal(fb.liveness.current_step, challenge.steps[0]);
      }
      await capture.complete();
      const result = (await client.result(clientState)).body;
      assert.equal(result.reason, 'liveness_failed');
    });

    it('a passive tenant gets no challenge', async function () {
      const { token } = await api.start('identify');
      const view = assertShape(captureSession, (await api.capture(token).session()).body);
      assert.deepEqual(view.liveness, { mode: 'passive', challenge: null });
    });

    it('a malformed X-Light-Phase is 400', async function () {
      const { token } = await api.start('identify');
      const res = await fetch(`${svc.url}/capture/v1/frames`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'image/jpeg', 'x-light-phase': 'red' },
        body: img.personB,
      });
      assert.equal(res.status, 400);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'invalid_light_phase');
    });
  });

  describe('user management', function () {
    it('lists, gets and deletes users with the documented shapes, paging with limit/offset', async function () {
      const t = svc.tenant();
      const client = new Client(svc.url, t.apiKey);
      await client.run('enroll', thrice(img.personA[0]), { externalUserId: 'u-a' });
      await client.run('enroll', thrice(img.personB), { externalUserId: 'u-b' });
      await client.run('enroll', thrice(img.personC), { externalUserId: 'u-c' });
      const all = assertShape(userList, (await client.post('/biometry/v1/list-users', {})).body);
      assert.equal(all.total, 3);
      assert.equal(all.limit, 100);
      assert.equal(all.offset, 0);
      assert.deepEqual(all.users.map((u) => u.external_user_id), ['u-a', 'u-b', 'u-c']);
      const page = assertShape(userList, (await client.post('/biometry/v1/list-users', { limit: 1, offset: 1 })).body);
      assert.deepEqual(page.users.map((u) => u.external_user_id), ['u-b']);
      assert.equal(page.total, 3);
      const one = assertShape(userDetails, (await client.post('/biometry/v1/get-user', { external_user_id: 'u-b' })).body);
      assert.equal(one.user.external_user_id, 'u-b');
      assert.ok(!JSON.stringify(one).includes('embedding'));
      const del = assertShape(userDeleted, (await client.post('/biometry/v1/delete-user', { external_user_id: 'u-b' })).body);
      assert.equal(del.external_user_id, 'u-b');
      const missing = await client.post('/biometry/v1/delete-user', { external_user_id: 'u-b' });
      assert.equal(missing.status, 404);
      assert.equal((missing.body.error as { code: string }).code, 'user_not_found');
      assert.equal(assertShape(userList, (await client.post('/biometry/v1/list-users', {})).body).total, 2);
      // the deletion is audited without biometric data, and under a pseudonym instead of the id
      const events = svc.service.store.audit.list(t.id);
      const deletion = events.find((e) => e.type === 'user_deleted');
      assert.ok(deletion);
      assert.match(deletion.externalUserId ?? '', /^erased:[A-Za-z0-9_-]{22}$/);
      assert.equal(deletion.score, null);
    });
  });
});
