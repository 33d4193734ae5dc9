import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import sharp from 'sharp';
import { DEFAULT_ANALYZER_LIMITS, FaceAnalyzer } from '../../src/biometrics/index.ts';
import { checkImageHeader, readImageSize } from '../../src/biometrics/image-header.ts';
import { QueueFullError, WorkerPool, WorkerTaskError } from '../../src/biometrics/pool.ts';
import { DEFAULT_QUALITY } from '../../src/biometrics/quality.ts';
import { Capture, Client } from '../support/client.ts';
import { type TestDevice, startTestDevice } from '../support/device.ts';
import { type Photos, photos } from '../support/photos.ts';
import { type TestService, startTestService } from '../support/service.ts';

/** A valid PNG of `width`×`height` black pixels: tiny on the wire, huge once decoded. */
function stripPng(width: number, height: number): Buffer {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (b: Buffer) => {
    let c = 0xffffffff;
    for (const x of b) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type), data]);
    const out = Buffer.alloc(body.length + 8);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), body.length + 4);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const rows = Buffer.alloc((1 + width * 3) * height); // filter byte 0, black pixels
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(rows, { level: 9 })), chunk('IEND', Buffer.alloc(0))]);
}

const SLEEPER = new URL('../support/sleeper-worker.mjs', import.meta.url);
const sleeperPool = (opts: { size?: number; queueSize?: number; taskTimeoutMs?: number } = {}) =>
  new WorkerPool({ workerUrl: SLEEPER, workerData: null, size: opts.size ?? 1, queueSize: opts.queueSize ?? 20, taskTimeoutMs: opts.taskTimeoutMs ?? 60_000 });

/**
 * Issue 7, section 3: one client cannot starve the engine. "A 1×2,500,000 PNG of 5 KB costs 1–3 s
 * of worker time. Seventeen small ones sent on one capture link made another tenant's frames and
 * the door's own kiosk get 503 for over a minute. Retry-After said 4 s."
 */
describe('one client cannot starve the engine', function () {
  this.timeout(180_000);

  describe('image headers are judged before decoding', function () {
    it('reads the size of PNG, JPEG (baseline and progressive) and WebP (lossy, lossless) from the header', async function () {
      const img = sharp({ create: { width: 321, height: 123, channels: 3, background: '#808080' } });
      for (const [name, bytes] of [
        ['png', await img.clone().png().toBuffer()],
        ['jpeg', await img.clone().jpeg().toBuffer()],
        ['jpeg', await img.clone().jpeg({ progressive: true }).toBuffer()],
        ['webp', await img.clone().webp().toBuffer()],
        ['webp', await img.clone().webp({ lossless: true }).toBuffer()],
      ] as const) {
        assert.deepEqual(readImageSize(bytes), { format: name, width: 321, height: 123 }, name);
      }
    });

    it('refuses a side above the limit, an area above the limit and a strip-shaped image', function () {
      const limits = { maxPixels: 25_000_000, maxSide: 4096, maxAspectRatio: 4 };
      assert.throws(() => checkImageHeader(stripPng(1, 2_500_000), limits), /each side may be at most 4096/);
      assert.throws(() => checkImageHeader(stripPng(5000, 1500), { ...limits, maxAspectRatio: 10 }), /each side may be at most 4096/);
      assert.throws(() => checkImageHeader(stripPng(4000, 4000), { ...limits, maxPixels: 10_000_000 }), /more than 10000000 pixels/);
      assert.throws(() => checkImageHeader(stripPng(3000, 600), limits), /factor of 4 at most/);
      assert.doesNotThrow(() => checkImageHeader(stripPng(640, 480), limits));
    });
  });

  describe('the worker pool', function () {
    it('takes the doors first, then the tenants in turn (one task each), whatever their backlog', async function () {
      const pool = sleeperPool();
      try {
        await pool.ready();
        const order: string[] = [];
        const run = (tag: string, lane: string, priority = false) => pool.run<{ tag: string }>({ tag, busyMs: 30 }, [], { lane, priority }).then((r) => order.push(r.tag));
        const all = [...['A1', 'A2', 'A3', 'A4', 'A5'].map((t) => run(t, 'tenant-a')), run('B1', 'tenant-b'), run('B2', 'tenant-b'), run('D1', 'doors', true)];
        await Promise.all(all);
        assert.deepEqual(order, ['A1', 'D1', 'A2', 'B1', 'A3', 'B2', 'A4', 'A5']);
      } finally {
        await pool.close();
      }
    });

    it('ends a frame over its time limit and replaces the stuck worker; the next frame is served', async function () {
      const pool = sleeperPool({ taskTimeoutMs: 300 });
      try {
        await pool.ready();
        const first = await pool.run<{ threadId: number }>({ tag: 'ok', busyMs: 10 }, [], { lane: 'a' });
        const stuck = await pool.run({ tag: 'stuck', busyMs: 30_000 }, [], { lane: 'a' }).catch((e: unknown) => e);
        assert.ok(stuck instanceof WorkerTaskError && stuck.code === 'timeout', String(stuck));
        const next = await pool.run<{ threadId: number }>({ tag: 'after', busyMs: 10 }, [], { lane: 'a' });
        assert.notEqual(next.threadId, first.threadId, 'a new worker');
      } finally {
        await pool.close();
      }
    });

    it('a full lane answers with a Retry-After after which a frame of that lane is taken (finding: 4 s for a wait of over a minute)', async function () {
      const pool = sleeperPool({ queueSize: 2 });
      try {
        await pool.ready();
        await pool.run({ tag: 'measure', busyMs: 1500 }, [], { lane: 'a' });
        const running = [0, 1, 2].map((i) => pool.run({ tag: `a${i}`, busyMs: 1500 }, [], { lane: 'a' }));
        const full = await pool.run({ tag: 'a3', busyMs: 10 }, [], { lane: 'a' }).catch((e: unknown) => e);
        assert.ok(full instanceof QueueFullError);
        assert.ok(full.retryAfterSeconds >= 2 && full.retryAfterSeconds <= 4, `Retry-After ${full.retryAfterSeconds}`);
        // another tenant is not refused: its lane is empty
        const other = pool.run({ tag: 'b', busyMs: 10 }, [], { lane: 'b' });
        await new Promise((r) => setTimeout(r, full.retryAfterSeconds * 1000));
        const later = pool.run({ tag: 'a-later', busyMs: 10 }, [], { lane: 'a' });
        await Promise.all([...running, other, later]);
      } finally {
        await pool.close();
      }
    });
  });

  describe('over HTTP', function () {
    let img: Photos;
    let svc: TestService;
    let api: Client;
    before(async function () {
      img = await photos();
      svc = await startTestService();
      api = new Client(svc.url, svc.tenant().apiKey);
    });
    after(() => svc?.close());

    it('a 1×2,500,000 PNG of a few KB is refused from its header at once (finding: 1–3 s of worker time)', async function () {
      const png = stripPng(1, 2_500_000);
      assert.ok(png.length < 20_000, `${png.length} bytes`);
      const { token } = await api.start('identify');
      const capture = api.capture(token);
      await capture.session();
      const reply = await capture.frame(png, 'image/png');
      assert.equal(reply.status, 413);
      assert.equal((reply.body.error as { code: string }).code, 'image_too_large');
      const strip = await capture.frame(stripPng(2000, 300), 'image/png');
      assert.deepEqual([strip.status, (strip.body.error as { code: string }).code], [400, 'invalid_image']);
    });

    it('frames refused before analysis do not use up the frame budget of the session', async function () {
      const { token } = await api.start('identify');
      const capture = api.capture(token);
      await capture.session();
      const png = stripPng(1, 2_500_000);
      for (let i = 0; i < 125; i++) assert.equal((await capture.frame(png, 'image/png')).status, 413);
      const good = await capture.frame(img.personB);
      assert.equal(good.status, 200, JSON.stringify(good.body));
    });

    it('one frame in flight per capture link: a second one at the same time gets 429', async function () {
      const { token } = await api.start('identify');
      const capture = api.capture(token);
      await capture.session();
      const replies = await Promise.all([capture.frame(img.personB), capture.frame(img.personB)]);
      assert.deepEqual(replies.map((r) => r.status).sort(), [200, 429]);
      assert.equal((replies.find((r) => r.status === 429)?.body.error as { code: string }).code, 'frame_in_flight');
    });
  });

  describe('a flood by one tenant', function () {
    let img: Photos;
    let device: TestDevice;
    let analyzer: FaceAnalyzer;
    before(async function () {
      img = await photos();
      // one worker and a short queue: what a small door device has
      analyzer = new FaceAnalyzer({ backend: 'auto', maxPixels: 25_000_000, quality: DEFAULT_QUALITY, ...DEFAULT_ANALYZER_LIMITS, workers: 1, queueSize: 4 });
      await analyzer.ready();
      device = await startTestDevice({ device_id: 'flooded', liveness: 'passive', doors: [{ id: 'main', relay: { driver: 'simulated' } }], mqtt: { embedded: { port: 0 } } }, {}, { analyzer });
    });
    after(async function () {
      await device?.close();
      await analyzer?.close();
    });

    it("another tenant's frames and the door's own session are still answered, within a bound", async function () {
      const svc = device.svc;
      const flooder = new Client(svc.url, svc.tenant().apiKey);
      const other = new Client(svc.url, svc.tenant().apiKey);
      const links = await Promise.all([0, 1, 2].map(async () => flooder.capture((await flooder.start('identify')).token)));
      let stop = false;
      const statuses: number[] = [];
      const png = stripPng(1, 2_500_000);
      // seventeen at a time on each of three links, real frames and strip PNGs, until told to stop
      const flood = links.map(async (link) => {
        await link.session();
        while (!stop) {
          const burst = await Promise.all(Array.from({ length: 17 }, (_, i) => link.frame(i % 2 ? png : img.personA[i % 3], i % 2 ? 'image/png' : 'image/jpeg')));
          statuses.push(...burst.map((r) => r.status));
        }
      });
      await new Promise((r) => setTimeout(r, 1500)); // the flood is under way

      const timed = async (capture: Capture, frame: Buffer) => {
        const started = performance.now();
        const reply = await capture.frame(frame);
        return { status: reply.status, ms: performance.now() - started };
      };
      const tenantB = other.capture((await other.start('identify')).token);
      await tenantB.session();
      const door = new Capture(svc.url, (await svc.service.device!.kiosk.startIdentify('main')).token);
      await door.session();
      const answered: { who: string; status: number; ms: number }[] = [];
      for (let i = 0; i < 3; i++) {
        answered.push({ who: 'tenant B', ...(await timed(tenantB, img.personB)) });
        answered.push({ who: 'door', ...(await timed(door, img.personC)) });
      }
      stop = true;
      await Promise.all(flood);

      for (const a of answered) {
        assert.equal(a.status, 200, `${a.who}: ${a.status}`);
        assert.ok(a.ms < 10_000, `${a.who} waited ${Math.round(a.ms)} ms`);
      }
      assert.ok(statuses.includes(429), 'the flooder was told to send one frame at a time');
      assert.ok(statuses.includes(413), 'its strip PNGs were refused from their header');
      console.log(`      (tenant B and door: ${answered.map((a) => Math.round(a.ms)).join(', ')} ms; flooder answers: ${[...new Set(statuses)].sort().join(', ')})`);
    });
  });

  describe('the per-frame time limit over HTTP', function () {
    it('a frame over the limit is answered 503 analysis_timeout with Retry-After, and the service goes on', async function () {
      const analyzer = new FaceAnalyzer({ backend: 'auto', maxPixels: 25_000_000, quality: DEFAULT_QUALITY, ...DEFAULT_ANALYZER_LIMITS, frameTimeoutMs: 1, workers: 1, queueSize: 4 });
      await analyzer.ready();
      const svc = await startTestService({}, { ownAnalyzer: analyzer });
      try {
        const api = new Client(svc.url, svc.tenant().apiKey);
        const { token } = await api.start('identify');
        const capture = api.capture(token);
        await capture.session();
        const reply = await capture.frame((await photos()).personB);
        assert.equal(reply.status, 503);
        assert.equal((reply.body.error as { code: string }).code, 'analysis_timeout');
        assert.match(reply.headers.get('retry-after') ?? '', /^\d+$/);
        assert.equal((await fetch(`${svc.url}/healthz`)).status, 200);
      } finally {
        await svc.close();
        await analyzer.close();
      }
    });
  });
});
