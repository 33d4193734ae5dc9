import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { normalize } from '../src/biometrics/embedding.ts';
import { HubStore } from '../src/hub/store.ts';
import { FLEET_MODEL } from '../src/sync/fleet-model.ts';
import { authface, serveHub, stop } from './support/cli.ts';
import { type FailoverDoor, poll, startSyncDoor } from './support/failover-fleet.ts';
import { freePort } from './support/mosquitto.ts';
import { type TestDatabase, createTestDatabase } from './support/postgres.ts';

/** A Mosquitto of the test's own that keeps its sessions and queued messages on disk, restarted on the same port. */
class PersistentMosquitto {
  #child: ChildProcess | undefined;

  constructor(
    readonly dir: string,
    readonly port: number,
  ) {
    fs.writeFileSync(
      path.join(dir, 'mosquitto.conf'),
      [`persistence true`, `persistence_location ${dir}/`, 'autosave_interval 1', 'log_dest stderr', ...(process.getuid?.() === 0 ? ['user root'] : []), `listener ${port} 127.0.0.1`, 'allow_anonymous true', ''].join('\n'),
    );
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.#child = spawn('mosquitto', ['-c', path.join(this.dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'ignore'] });
    for (let i = 0; i < 200; i++) {
      const up = await new Promise<boolean>((resolve) => {
        const s = net.connect(this.port, '127.0.0.1', () => resolve(!!s.end()));
        s.on('error', () => resolve(false));
      });
      if (up) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('mosquitto did not start');
  }

  /** Stops it as a restart does (SIGTERM: it writes its persistence file on the way out). */
  async stop(): Promise<void> {
    const child = this.#child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
}

/**
 * Issue 21, the broker: Mosquitto (with persistence) restarted while two doors send enrolments,
 * deletions and door events through `authface hub serve`. Nothing acknowledged is lost, nothing
 * is applied twice: the doors' outboxes and the hub's log hold what was in flight.
 */
describe('issue 21: a Mosquitto restart during a stream', function () {
  this.timeout(300_000);
  const prefix = `authface-brokerfail-${process.pid}`;
  const hubEnv = { AUTHFACE_HUB_MASTER_KEY: crypto.randomBytes(32).toString('hex'), LOG_LEVEL: 'info' };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-brokerfail-'));
  const face = (i: number) => normalize(Float32Array.from({ length: 128 }, (_, k) => Math.sin(i * 2.3 + k)));
  let broker: PersistentMosquitto;
  let db: TestDatabase;
  let tenantId: string;
  let hub: (ChildProcess & { url: string }) | undefined;
  const doors: FailoverDoor[] = [];

  async function startDoor(name: string): Promise<void> {
    doors.push(await startSyncDoor({ name, dataDir: path.join(dir, name), tenantId, databaseUrl: db.url, hubEnv, brokerUrl: broker.url, prefix }));
  }

  /** A door's access decision, kept for the central store until the hub acknowledges it. */
  function doorEvent(door: (typeof doors)[number], i: number): void {
    door.store.audit.record({ tenantId, type: 'access_decision', flow: null, sessionId: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`, externalUserId: null, result: 'denied', reason: 'not_identified', score: null, factor: 'face', doorId: 'main' });
    door.sync.flushEvents();
  }

  before(async function () {
    broker = new PersistentMosquitto(dir, await freePort());
    await broker.start();
    db = await createTestDatabase();
    tenantId = (JSON.parse((await authface(['hub', 'tenant', 'add', '--name', 'acme', '--database-url', db.url], hubEnv)).stdout) as { tenant_id: string }).tenant_id;
    hub = await serveHub({ databaseUrl: db.url, brokerUrl: broker.url, prefix }, hubEnv);
    for (const name of ['front', 'back']) await startDoor(name);
  });
  after(async function () {
    for (const d of doors) {
      await d.sync.close();
      d.store.close();
    }
    if (hub && hub.exitCode === null && hub.signalCode === null) await stop(hub);
    await broker?.stop();
    await db?.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('restarted mid-stream: every enrolment, deletion and door event reaches the hub once, and both doors end with its people', async function () {
    const [front, back] = doors;
    for (let i = 0; i < 300; i++) front.store.users.enroll(tenantId, `p${i}`, { [FLEET_MODEL]: face(i) });
    for (let i = 0; i < 100; i++) doorEvent(i % 2 ? front : back, i);
    const hubStore = await HubStore.open(db.url);
    try {
      await poll(async () => (await hubStore.headSeq(tenantId)) >= 100, 'a hundred changes sequenced');
      await broker.stop();
      const down = performance.now();
      // while the broker is away the doors go on: a deletion and more events wait in their outboxes
      const deletedWhileDown = Array.from({ length: 30 }, (_, k) => `p${k * 10}`).filter((id) => back.store.users.get(tenantId, id) !== undefined);
      for (const id of deletedWhileDown) back.store.eraseUser(tenantId, id, () => null);
      assert.ok(deletedWhileDown.length > 0, 'the back door held some of them');
      for (let i = 100; i < 150; i++) doorEvent(i % 2 ? front : back, i);
      await new Promise((r) => setTimeout(r, 1500));
      await broker.start();
      const up = performance.now();
      await poll(
        async () => {
          const digest = await hubStore.digest(tenantId);
          const head = await hubStore.headSeq(tenantId);
          const events = Number((await hubStore.pool.query<{ n: string }>('SELECT COUNT(*) AS n FROM hub_access_events WHERE tenant_id = $1', [tenantId])).rows[0].n);
          return events === 150 && doors.every((d) => d.sync.pending() === 0 && d.sync.cursor === head && d.store.users.digest(tenantId).digest === digest);
        },
        'every change and event at the hub, both doors converged',
      );
      console.log(`      broker down ${Math.round(up - down)} ms; everything at the hub and both doors converged ${Math.round(performance.now() - up)} ms after it came back`);
      const rows = (await hubStore.pool.query<{ seq: string; kind: string; external_user_id: string }>('SELECT seq, kind, external_user_id FROM hub_changes WHERE tenant_id = $1 ORDER BY seq', [tenantId])).rows;
      assert.deepEqual(rows.map((r) => Number(r.seq)), Array.from({ length: rows.length }, (_, i) => i + 1), 'no number twice, none skipped');
      const upserts = rows.filter((r) => r.kind === 'user.upsert' || r.kind === 'user.erased').length;
      const deletions = rows.filter((r) => r.kind === 'user.delete').map((r) => r.external_user_id);
      assert.equal(upserts, 300, 'each enrolment sequenced once (a deletion blanks its earlier upsert to user.erased)');
      assert.deepEqual(deletions.sort(), [...deletedWhileDown].sort(), 'each deletion once');
      const live = (await hubStore.pool.query<{ n: string }>('SELECT COUNT(*) AS n FROM hub_users WHERE tenant_id = $1 AND NOT deleted', [tenantId])).rows[0].n;
      assert.equal(Number(live), 300 - deletedWhileDown.length);
      const events = await hubStore.pool.query<{ n: string; distinct_ids: string }>('SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS distinct_ids FROM hub_access_events WHERE tenant_id = $1', [tenantId]);
      assert.deepEqual([Number(events.rows[0].n), Number(events.rows[0].distinct_ids)], [150, 150], 'every door event once');
    } finally {
      await hubStore.close();
    }
  });
});
