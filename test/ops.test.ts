import assert from 'node:assert/strict';
import { DEFAULT_ANALYZER_LIMITS, FaceAnalyzer } from '../src/biometrics/index.ts';
import { DEFAULT_QUALITY } from '../src/biometrics/quality.ts';
import { Client } from './support/client.ts';
import { type Photos, photos, thrice } from './support/photos.ts';
import { type TestService, startTestService } from './support/service.ts';

describe('operations: health, readiness, metrics, OpenAPI, back-pressure', function () {
  let svc: TestService;
  let api: Client;
  let img: Photos;

  before(async function () {
    img = await photos();
    svc = await startTestService();
    api = new Client(svc.url, svc.tenant().apiKey);
  });
  after(() => svc.close());

  it('/healthz and /readyz answer once the models are loaded', async function () {
    assert.deepEqual(await (await fetch(`${svc.url}/healthz`)).json(), { status: 'ok' });
    const ready = await fetch(`${svc.url}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(await ready.json(), { status: 'ready', checks: { engine: 'ready' } });
  });

  it('/metrics exposes request, frame and session counters in Prometheus format', async function () {
    await api.run('identify', thrice(img.personB));
    const res = await fetch(`${svc.url}/metrics`);
    assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    const text = await res.text();
    assert.match(text, /authface_frames_total\{accepted="true"\} [1-9]/);
    assert.match(text, /authface_sessions_finished_total\{flow="identify",status="fail",reason="not_identified"\} 1/);
    assert.match(text, /authface_http_request_duration_seconds_count\{method="POST",route="\/capture\/v1\/frames",status="200"\} [1-9]/);
    assert.match(text, /authface_templates 0/);
  });

  it('/openapi.json is an OpenAPI 3.1 document of every endpoint, from the validation schemas', async function () {
    const doc = (await (await fetch(`${svc.url}/openapi.json`)).json()) as {
      openapi: string;
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: { $ref?: string } }> } }>>;
      components: { schemas: Record<string, { properties?: Record<string, unknown>; required?: string[] }> };
    };
    assert.equal(doc.openapi, '3.1.0');
    for (const p of ['enroll', 'verify', 'identify', 'update_embedding', 'result', 'list-users', 'get-user', 'delete-user']) {
      assert.ok(doc.paths[`/biometry/v1/${p}`]?.post, p);
    }
    for (const p of ['/capture/v1/session', '/capture/v1/frames', '/capture/v1/complete', '/healthz', '/readyz', '/metrics']) assert.ok(doc.paths[p], p);
    const flowRef = doc.paths['/biometry/v1/enroll'].post.requestBody?.content['application/json'].schema.$ref;
    assert.equal(flowRef, '#/components/schemas/FlowRequest');
    const flow = doc.components.schemas.FlowRequest;
    assert.deepEqual(flow.required?.sort(), ['client_state', 'external_user_id', 'redirect_url']);
    assert.ok(doc.components.schemas.ResultFinal.properties?.event_id);
    assert.ok(doc.components.schemas.Error);
  });

  it('a full engine queue answers 503 with Retry-After instead of piling up', async function () {
    const analyzer = new FaceAnalyzer({ backend: 'auto', maxPixels: 25_000_000, quality: DEFAULT_QUALITY, ...DEFAULT_ANALYZER_LIMITS, workers: 1, queueSize: 1 });
    const busy = await startTestService({}, { ownAnalyzer: analyzer });
    try {
      await analyzer.ready();
      const client = new Client(busy.url, busy.tenant().apiKey);
      const tokens = await Promise.all(Array.from({ length: 6 }, () => client.start('identify')));
      const replies = await Promise.all(tokens.map(({ token }) => client.capture(token).frame(img.personA[0])));
      const statuses = replies.map((r) => r.status);
      assert.ok(statuses.includes(200), `some frames were analysed: ${statuses}`);
      const refused = replies.filter((r) => r.status === 503);
      assert.ok(refused.length >= 1, `some frames were refused: ${statuses}`);
      for (const r of refused) {
        assert.equal((r.body.error as { code: string }).code, 'engine_busy');
        assert.ok(Number(r.headers.get('retry-after')) >= 1);
      }
    } finally {
      await busy.close();
      await analyzer.close();
    }
  });
});
