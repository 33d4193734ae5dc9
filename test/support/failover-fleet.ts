import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { publicKeyFromBase64 } from '../../src/access/signed-command.ts';
import { normalize } from '../../src/biometrics/embedding.ts';
import { GalleryIndex } from '../../src/biometrics/gallery.ts';
import { EventBus } from '../../src/core/events.ts';
import { createLogger } from '../../src/core/logger.ts';
import { HubStore } from '../../src/hub/store.ts';
import { type Store, openStore } from '../../src/store/index.ts';
import { loadDeviceKey, loadSigningKey } from '../../src/sync/device-key.ts';
import { DeviceSync } from '../../src/sync/device-sync.ts';
import { unwrapTenantKey } from '../../src/sync/envelope.ts';
import { FLEET_MODEL } from '../../src/sync/fleet-model.ts';
import { TenantKeyring } from '../../src/sync/keyring.ts';
import { syncTopics } from '../../src/sync/protocol.ts';
import { authface, serveHub, stop } from './cli.ts';
import { testBroker } from './mqtt.ts';
import { PgReplicaPair } from './pg-replication.ts';

export interface FailoverDoor {
  name: string;
  store: Store;
  sync: DeviceSync;
}

/**
 * A fleet whose hub database is a primary and a standby of the test's own (PgReplicaPair):
 * `authface hub serve` given both hosts, and two doors (their stores and sync clients, no engine)
 * on the shared Mosquitto. Every acknowledgement the hub sends a door is recorded.
 */
export class FailoverFleet {
  readonly acknowledged = new Map<string, number>();
  readonly doors: FailoverDoor[] = [];
  hubOutput = '';

  private constructor(
    readonly pair: PgReplicaPair,
    readonly brokerUrl: string,
    readonly prefix: string,
    readonly hubEnv: Record<string, string>,
    readonly dir: string,
    readonly tenantId: string,
    readonly apiKey: string,
    readonly hub: ChildProcess & { url: string },
    private readonly watcher: mqtt.MqttClient,
  ) {}

  static async start(options: { synchronous: boolean; doors: string[] }): Promise<FailoverFleet> {
    const pair = await PgReplicaPair.create({ synchronous: options.synchronous });
    const brokerUrl = (await testBroker()).url;
    const prefix = `authface-dbfail-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;
    const hubEnv = { AUTHFACE_HUB_MASTER_KEY: crypto.randomBytes(32).toString('hex'), LOG_LEVEL: 'info' };
    const added = JSON.parse((await authface(['hub', 'tenant', 'add', '--name', 'acme', '--database-url', pair.url], hubEnv)).stdout) as { tenant_id: string; api_key: string };
    const hub = await serveHub({ databaseUrl: pair.url, brokerUrl, prefix }, hubEnv);
    const watcher = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0 });
    const fleet = new FailoverFleet(pair, brokerUrl, prefix, hubEnv, fs.mkdtempSync(path.join(os.tmpdir(), 'authface-dbfail-')), added.tenant_id, added.api_key, hub, watcher);
    hub.stdout?.on('data', (d: Buffer) => (fleet.hubOutput += d.toString()));
    hub.stderr?.on('data', (d: Buffer) => (fleet.hubOutput += d.toString()));
    watcher.on('message', (_topic, payload) => {
      let reply: { type?: string; status?: string; change_id?: string; seq?: number | null };
      try {
        reply = JSON.parse(payload.toString()) as typeof reply;
      } catch {
        return; // a retained message cleared
      }
      if (reply.type === 'ack' && reply.status === 'sequenced' && reply.change_id && reply.seq) fleet.acknowledged.set(reply.change_id, reply.seq);
    });
    await watcher.subscribeAsync(`${prefix}/sync/${added.tenant_id}/device/+`, { qos: 1 });
    for (const name of options.doors) await fleet.#startDoor(name);
    return fleet;
  }

  async #startDoor(name: string): Promise<void> {
    this.doors.push(await startSyncDoor({ name, dataDir: path.join(this.dir, name), tenantId: this.tenantId, databaseUrl: this.pair.url, hubEnv: this.hubEnv, brokerUrl: this.brokerUrl, prefix: this.prefix }));
  }

  door(name: string): FailoverDoor {
    return this.doors.find((d) => d.name === name) as FailoverDoor;
  }

  /** Enrols `ids` at a door (a made-up template each, as a capture would give). */
  enrol(door: string, ids: string[]): void {
    for (const id of ids) this.door(door).store.users.enroll(this.tenantId, id, { [FLEET_MODEL]: face(id) });
  }

  /** The highest sequence number in a node's log. */
  async head(node: PgReplicaPair['primary']): Promise<number> {
    return Number((await this.pair.query(node, 'SELECT COALESCE(MAX(seq), 0) AS n FROM hub_changes')).rows[0].n);
  }

  /**
   * When the first change after `at` (Date.now() ms) was committed on a node, by the database's own
   * clock (the same machine's): the doors send what waited as soon as they hear of a promotion,
   * often before a poll of the head could see it move.
   */
  async firstChangeAfter(node: PgReplicaPair['primary'], at: number): Promise<number> {
    const r = await this.pair.query(node, 'SELECT extract(epoch FROM min(committed_at)) * 1000 AS t FROM hub_changes WHERE tenant_id = $1 AND committed_at > to_timestamp($2 / 1000.0)', [this.tenantId, at]);
    if (r.rows[0].t === null) throw new Error('no change was committed after the failover');
    return Number(r.rows[0].t);
  }

  /** The epoch of a node's log, as the hub reads it (its system identifier and timeline). */
  async epoch(node: PgReplicaPair['primary']): Promise<string> {
    return (await this.pair.query(node, `SELECT system_identifier::text || '.' || ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int AS epoch FROM pg_control_system()`)).rows[0].epoch as string;
  }

  /** Waits until every door has sent everything, applied the hub's head and holds the hub's people; the ms it took. */
  async converged(hubStore: HubStore, what = 'every door converged with the hub'): Promise<number> {
    const started = performance.now();
    let seen = '';
    await poll(async () => {
      const digest = await hubStore.digest(this.tenantId);
      const top = await hubStore.headSeq(this.tenantId);
      // what each door is at, for the message if it never converges
      seen = `hub head ${top}; ${this.doors.map((d) => `${d.name}: cursor ${d.sync.cursor}, pending ${d.sync.pending()}, people ${d.store.users.digest(this.tenantId).users}, same people ${d.store.users.digest(this.tenantId).digest === digest}`).join('; ')}`;
      return this.doors.every((d) => d.sync.pending() === 0 && d.sync.cursor === top && d.store.users.digest(this.tenantId).digest === digest);
    }, what).catch((err: Error) => {
      throw new Error(`${err.message} (${seen})`);
    });
    return performance.now() - started;
  }

  async close(): Promise<void> {
    for (const d of this.doors) {
      await d.sync.close();
      d.store.close();
    }
    if (this.hub.exitCode === null && this.hub.signalCode === null) await stop(this.hub);
    await this.watcher.endAsync();
    const c = await mqtt.connectAsync(this.brokerUrl, { reconnectPeriod: 0 });
    const topics = syncTopics(this.prefix, this.tenantId);
    for (const t of [topics.head, topics.signedHead, ...this.doors.map((d) => topics.state(d.name))]) await c.publishAsync(t, '', { retain: true });
    await c.endAsync();
    await this.pair.destroy();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export function face(id: string): Float32Array {
  const seed = [...id].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 100_003, 7);
  return normalize(Float32Array.from({ length: 128 }, (_, k) => Math.cos(seed * 3.1 + k)));
}

export async function poll(check: () => boolean | Promise<boolean>, what: string, ms = 120_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * A door as far as sync goes (its store and sync client, no engine), set up as an operator does
 * with the CLI (`authface hub wrap-key`, `hub key`), connected to the broker.
 */
export async function startSyncDoor(o: { name: string; dataDir: string; tenantId: string; databaseUrl: string; hubEnv: Record<string, string>; brokerUrl: string; prefix: string }): Promise<FailoverDoor> {
  const keys = ['--public-key', loadDeviceKey(o.dataDir).publicKey, '--signing-key', loadSigningKey(o.dataDir).publicKey];
  const wrapped = JSON.parse((await authface(['hub', 'wrap-key', '--tenant', o.tenantId, '--device', o.name, ...keys, '--database-url', o.databaseUrl], o.hubEnv)).stdout);
  const { hub_public_key } = JSON.parse((await authface(['hub', 'key', '--tenant', o.tenantId, '--database-url', o.databaseUrl], o.hubEnv)).stdout) as { hub_public_key: string };
  const store = openStore(o.dataDir, undefined);
  store.tenants.create({ id: o.tenantId, name: 'acme', allowedOrigins: [], livenessMode: 'passive' });
  const sync = DeviceSync.start(store, new GalleryIndex(), new EventBus(), {
    deviceId: o.name,
    tenantId: o.tenantId,
    url: o.brokerUrl,
    prefix: o.prefix,
    keyring: TenantKeyring.of(o.tenantId, unwrapTenantKey(wrapped.keys[0], loadDeviceKey(o.dataDir).privateKeyPem, { tenantId: o.tenantId, deviceId: o.name })),
    hubKey: publicKeyFromBase64(hub_public_key),
    model: FLEET_MODEL,
    logger: createLogger((process.env.FAILOVER_DOOR_LOG as 'debug' | undefined) ?? 'silent'),
  });
  await poll(() => sync.connected, `${o.name} on the broker`, 10_000);
  return { name: o.name, store, sync };
}
