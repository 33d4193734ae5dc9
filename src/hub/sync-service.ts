import mqtt, { type MqttClient } from 'mqtt';
import type { Logger } from '../core/logger.ts';
import { syncClientOptions } from '../sync/client-options.ts';
import {
  type Change,
  type Submission,
  type SubmittedChange,
  type SyncReply,
  type UserUpsert,
  MAX_CHANGES_PER_BATCH,
  MAX_USERS_PER_CHUNK,
  snapshotRequestSchema,
  deviceStateSchema,
  doorEventsSchema,
  fetchRequestSchema,
  parseMessage,
  submissionSchema,
  syncTopics,
} from '../sync/protocol.ts';
import { z } from 'zod';
import { type MessageAuth, type MessagePurpose, authenticate, isAuthentic } from '../sync/envelope.ts';
import type { SignedCommand } from '../access/signed-command.ts';
import { Waiters } from '../core/waiters.ts';
import { HubError } from './errors.ts';
import type { TenantKey } from './keys.ts';
import { sendNotice } from './revocation.ts';
import type { AppendResult, HubStore } from './store.ts';

/** What a device answers a command with (access/remote-commands.ts). */
const commandReplySchema = z.object({ request_id: z.string().nullable(), command: z.string(), door: z.string(), ok: z.boolean(), error: z.string().optional() });
export type CommandReply = z.output<typeof commandReplySchema>;

function safeJson(payload: Buffer): unknown {
  try {
    return JSON.parse(payload.toString('utf8'));
  } catch {
    return null;
  }
}

/** A message before its MAC is added. */
type Unsigned<T> = T extends unknown ? Omit<T, 'auth'> : never;

/**
 * The hub's side of an enrolment a door waits on (a submission with fleet_check): the fleet-wide
 * 1:N duplicate check, and the template re-sealed at the version the hub will sequence.
 */
export type FleetCheck = (
  tenantId: string,
  body: UserUpsert,
  kind: 'enroll' | 'update',
) => Promise<{ ok: true; body: UserUpsert; checkedThrough: number } | { ok: false; reason: string; score?: number; version?: number }>;

/** An enrolment whose duplicate check keeps being overtaken by other templates is checked at most this often. */
const MAX_FLEET_CHECKS = 5;

/** How long the hub uses its list of a tenant's revoked devices before reading it again (a revocation is made by the CLI). */
const REVOKED_TTL_MS = 1000;

/** A device is sent its notice again at most this often (it speaks under an old key, or after its revocation). */
const RENOTICE_INTERVAL_MS = 10_000;

/** How often the hub republishes each tenant's head, so a device that missed a message finds out. */
const HEAD_INTERVAL_MS = 5000;

export interface HubSyncOptions {
  url: string;
  prefix: string;
  /** Broker credentials of the hub (or in the URL). */
  username?: string;
  password?: string;
  /** The CA that signed the broker's TLS certificate, when not a public one. */
  ca?: Buffer;
  logger: Logger;
}

/**
 * The hub on the broker: it sequences the changes devices submit (store.append), publishes each
 * sequenced change on the tenant's log, answers a device's fetch with the range it asks for, and
 * republishes each tenant's head (retained). Publishing is best effort: the log in PostgreSQL is
 * the truth, and a device that misses a message sees the gap in the head and fetches it, so a hub
 * that dies between its commit and its publish loses nothing.
 */
export class HubSync {
  readonly #timer: NodeJS.Timeout;
  /** Sequenced changes waiting to be published, per tenant. */
  readonly #outgoing = new Map<string, Change[]>();
  /** Commands sent and waiting for their result, by request id. */
  readonly #commands = new Waiters<CommandReply>();
  /** Set by the hub's API once its 1:N index is loaded; until then fleet checks are refused as `hub_starting`. */
  fleetCheck: FleetCheck | null = null;
  #closing = false;
  /** Each tenant's revoked devices, and when the list was read. */
  readonly #revoked = new Map<string, { ids: Set<string>; at: number }>();
  /** When each device (`tenant/device`) was last sent its notice again. */
  readonly #renoticed = new Map<string, number>();

  private constructor(
    private readonly client: MqttClient,
    private readonly store: HubStore,
    private readonly options: HubSyncOptions,
  ) {
    this.#timer = setInterval(() => void this.publishHeads(), HEAD_INTERVAL_MS);
    this.#timer.unref();
  }

  static async start(store: HubStore, options: HubSyncOptions): Promise<HubSync> {
    const clientOptions = syncClientOptions('authface-hub', { username: options.username, password: options.password, ...(options.ca ? { ca: options.ca } : {}) });
    const client = await mqtt.connectAsync(options.url, clientOptions);
    const hub = new HubSync(client, store, options);
    const subscribe = async () => {
      // several hubs on one database share the work: each submission, fetch and event batch goes
      // to one of them (an MQTT shared subscription); device states (retained) go to all
      const shared = (kind: string) => `$share/authface-hub/${options.prefix}/sync/+/${kind}/+`;
      // device states (retained) and the results of commands go to every hub (each waits for its own)
      await client.subscribeAsync([shared('submit'), shared('fetch'), shared('snapshot'), shared('events'), `${options.prefix}/sync/+/state/+`, `${options.prefix}/+/command/result`], { qos: 1 });
      await hub.publishHeads();
    };
    client.on('connect', () => void subscribe().catch((err: Error) => options.logger.error({ problem: err.message }, 'hub: cannot subscribe')));
    client.on('message', (topic, payload) => void hub.#message(topic, payload).catch((err: Error) => options.logger.error({ topic, problem: err.message }, 'hub: message failed')));
    await subscribe();
    options.logger.info({ url: options.url.replace(/\/\/[^@/]*@/, '//') }, 'hub connected to the broker');
    return hub;
  }

  /**
   * Sends a signed command to a device's command topic and waits up to `ms` for its result (the
   * device answers on its command/result topic with the request id); null: no answer in time.
   */
  async sendCommand(deviceId: string, command: SignedCommand, ms: number): Promise<CommandReply | null> {
    const requestId = command.request_id;
    if (!requestId) throw new Error('a command the hub sends carries a request_id');
    const answered = this.#commands.wait(requestId, ms);
    await this.client.publishAsync(`${this.options.prefix}/${deviceId}/command`, JSON.stringify(command), { qos: 1 });
    return answered;
  }

  /** Publishes a change sequenced elsewhere in this process (the hub's API), after its commit. */
  publish(change: Change): void {
    this.#queueChange(change.tenant_id, change);
  }

  /** Sequences a change made at the hub itself (an admin) and publishes it. */
  async submit(tenantId: string, body: SubmittedChange, origin = 'hub'): Promise<AppendResult> {
    const result = await this.store.append(tenantId, body, { origin });
    if (result.status === 'sequenced' && !result.duplicate) this.#queueChange(tenantId, result.change);
    return result;
  }

  /** Publishes every tenant's head (retained). */
  async publishHeads(): Promise<void> {
    for (const h of await this.store.heads()) {
      await this.client.publishAsync(syncTopics(this.options.prefix, h.tenantId).head, JSON.stringify({ tenant_id: h.tenantId, seq: h.seq }), { qos: 1, retain: true });
    }
  }

  /**
   * Leaves the broker without waiting for publishes still in flight: the log in PostgreSQL holds
   * every change, and devices fetch what they missed.
   */
  async close(): Promise<void> {
    this.#closing = true;
    clearInterval(this.#timer);
    await this.client.endAsync(true);
  }

  async #message(topic: string, payload: Buffer): Promise<void> {
    if (this.#closing) return;
    if (topic.endsWith('/command/result')) {
      const reply = commandReplySchema.safeParse(safeJson(payload));
      if (reply.success && reply.data.request_id) this.#commands.settle(reply.data.request_id, reply.data);
      return;
    }
    const levels = topic.slice(this.options.prefix.length + 1).split('/'); // sync/<tenant>/<kind>[/<device>]
    const [, tenantId, kind] = levels;
    const topics = syncTopics(this.options.prefix, tenantId);
    // a revoked device is not heard at all (its broker client is gone too, where the hub manages it):
    // it is told again that it is revoked, and erases what it holds
    if (levels.length === 4 && (await this.#isRevoked(tenantId, levels[3]))) {
      if (payload.length > 0) await this.#renotice(tenantId, levels[3]);
      return;
    }
    if (kind === 'state' && levels.length === 4) {
      if (payload.length === 0) return; // a retained state being cleared
      const msg = await this.#authentic(tenantId, 'state', deviceStateSchema, payload);
      if (!msg.ok && msg.oldKey) await this.#renotice(tenantId, levels[3]);
      if (!msg.ok || msg.value.tenant_id !== tenantId || topic !== topics.state(msg.value.device_id)) {
        return this.options.logger.warn({ tenant: tenantId, problem: msg.ok ? 'state on another device\'s topic' : msg.problem }, 'hub: a device state was refused');
      }
      const { diverged, repair } = await this.store.devices.recordState(msg.value);
      if (diverged) this.options.logger.warn({ tenant: tenantId, device: msg.value.device_id, repair }, "hub: a device's user set differs from the hub's at the same sequence (flagged; it reloads a snapshot)");
      if (repair) {
        // the snapshot makes the device hold exactly the hub's people, then the log follows
        const head = await this.store.headSeq(tenantId);
        await this.client.publishAsync(topics.reply(msg.value.device_id), JSON.stringify({ type: 'range', tenant_id: tenantId, head, changes: [], snapshot: true }), { qos: 1 });
      }
      return;
    }
    // a device's own topic: the device_id inside must be the topic's (a broker ACL keeps each device to its own)
    const device = levels.length === 4 ? levels[3] : undefined;
    const another = (value: { device_id: string }) => value.device_id !== device;
    if (device === undefined) return;
    if (kind === 'submit') {
      const msg = await this.#authentic(tenantId, 'submission', submissionSchema, payload);
      if (!msg.ok && msg.oldKey) await this.#renotice(tenantId, device);
      if (msg.ok && another(msg.value)) return this.options.logger.warn({ tenant: tenantId, topic }, "hub: a submission on another device's topic was refused");
      if (!msg.ok) return this.options.logger.warn({ tenant: tenantId, problem: msg.problem }, 'hub: a submission was refused');
      const { ack, change } = await this.#sequenceSubmission(tenantId, msg.value);
      await this.#reply(tenantId, msg.value.device_id, ack);
      if (change) this.#queueChange(tenantId, change);
    } else if (kind === 'events') {
      const msg = await this.#authentic(tenantId, 'events', doorEventsSchema, payload);
      if (!msg.ok && msg.oldKey) await this.#renotice(tenantId, device);
      if (msg.ok && another(msg.value)) return this.options.logger.warn({ tenant: tenantId, topic }, "hub: door events on another device's topic were refused");
      if (!msg.ok) return this.options.logger.warn({ tenant: tenantId, problem: msg.problem }, 'hub: door events were refused');
      const held = await this.store.recordDoorEvents(tenantId, msg.value);
      await this.#reply(tenantId, msg.value.device_id, { type: 'events_ack', event_ids: held });
    } else if (kind === 'fetch') {
      const msg = parseMessage(fetchRequestSchema, payload);
      if (msg.ok && another(msg.value)) return;
      if (!msg.ok) return this.options.logger.warn({ tenant: tenantId, problem: msg.problem }, 'hub: a fetch was refused');
      const head = await this.store.headSeq(tenantId);
      const after = msg.value.after;
      // a new device, or one behind the retained log, starts from a snapshot of the users
      if ((after === 0 && head > 0) || after < (await this.store.compactedSeq(tenantId))) {
        await this.client.publishAsync(topics.reply(msg.value.device_id), JSON.stringify({ type: 'range', tenant_id: tenantId, head, changes: [], snapshot: true }), { qos: 1 });
        return;
      }
      // several ranges per request, relayed as PostgreSQL writes them (a door far behind, or
      // two hundred reconnecting at once, must not cost the hub a round trip and a parse each)
      const limit = Math.min(msg.value.limit, MAX_CHANGES_PER_BATCH);
      let from = after;
      for (let i = 0; i < msg.value.batches; i++) {
        const page = await this.store.changesAfterJson(tenantId, from, limit, msg.value.models);
        // a range that carries further templates may end before `limit` (MAX_CHUNK_BYTES)
        const more = page.count > 0 && page.last < head && i < msg.value.batches - 1;
        const reply = `{"type":"range","tenant_id":${JSON.stringify(tenantId)},"head":${head},"changes":${page.json}${more ? ',"more":true' : ''}}`;
        await this.client.publishAsync(topics.reply(msg.value.device_id), reply, { qos: 1 });
        if (!more) break;
        from = page.last;
      }
    } else if (kind === 'snapshot') {
      const msg = parseMessage(snapshotRequestSchema, payload);
      if (msg.ok && another(msg.value)) return;
      if (!msg.ok) return this.options.logger.warn({ tenant: tenantId, problem: msg.problem }, 'hub: a snapshot request was refused');
      // several chunks per request: a round trip per chunk would cost more than applying it
      let after = msg.value.after;
      for (let i = 0; i < msg.value.chunks; i++) {
        const chunk = await this.store.snapshotChunk(tenantId, after, Math.min(msg.value.limit, MAX_USERS_PER_CHUNK), msg.value.models);
        const more = chunk.next !== null && i < msg.value.chunks - 1;
        await this.#reply(tenantId, msg.value.device_id, { type: 'snapshot', tenant_id: tenantId, after, ...chunk, more });
        if (!more) break;
        after = chunk.next;
      }
    }
  }

  /**
   * Sequences a device's submission; returns the ack for the device, and the change to publish
   * (none for a retry: its change went out when it was sequenced). An enrolment the door waits on
   * passes the fleet's duplicate check first; when another template is sequenced between that
   * check and the append (another hub process, another door), it is checked again.
   */
  async #sequenceSubmission(tenantId: string, submission: Submission): Promise<{ ack: Unsigned<SyncReply>; change?: Change }> {
    const { device_id, change_id, body } = submission;
    // a retry of a change already sequenced is only acknowledged (the check ran the first time)
    const kind = submission.fleet_check;
    const checks = kind !== undefined && body.kind === 'user.upsert' && !(await this.store.sequenced(tenantId, change_id));
    for (let attempt = 1; attempt <= MAX_FLEET_CHECKS; attempt++) {
      let checked: { body: SubmittedChange; checkedThrough?: number } = { body };
      if (checks && body.kind === 'user.upsert') {
        const verdict: Awaited<ReturnType<FleetCheck>> = this.fleetCheck ? await this.fleetCheck(tenantId, body, kind) : { ok: false, reason: 'hub_starting' };
        if (!verdict.ok) {
          const { reason, score, version } = verdict;
          return { ack: { type: 'ack', change_id, status: 'refused', seq: null, reason, ...(score !== undefined ? { score } : {}), ...(version !== undefined ? { version } : {}) } };
        }
        checked = verdict;
      }
      const result = await this.store.append(tenantId, checked.body, { origin: device_id, changeId: change_id, checkedThrough: checked.checkedThrough });
      if (result.status === 'recheck') continue;
      if (result.status === 'conflict' && body.kind === 'user.templates') {
        this.options.logger.info({ tenant: tenantId, device: device_id, user_change: change_id, reason: result.reason }, "hub: templates made on a person's earlier version were left out");
        return { ack: { type: 'ack', change_id, status: 'conflict', seq: null, reason: result.reason } };
      }
      if (result.status === 'conflict') {
        this.options.logger.warn({ tenant: tenantId, device: device_id, user_change: change_id, reason: result.reason }, 'hub: a change was refused as a conflict (recorded for an admin)');
        return { ack: { type: 'ack', change_id, status: 'conflict', seq: null, reason: result.reason } };
      }
      const { change } = result;
      const ack: Unsigned<SyncReply> = { type: 'ack', change_id, status: 'sequenced', seq: change.seq, reason: null, ...('version' in change ? { version: change.version } : {}) };
      return { ack, change: result.duplicate ? undefined : change };
    }
    // the tenant's templates kept changing under the check: the door decides on its own and queues
    return { ack: { type: 'ack', change_id, status: 'refused', seq: null, reason: 'busy' } };
  }

  /** Authenticates a reply to one device with the tenant key and sends it. */
  async #reply(tenantId: string, deviceId: string, reply: Unsigned<SyncReply>): Promise<void> {
    const signed = authenticate(await this.store.keys.current(tenantId), 'reply', tenantId, reply);
    await this.client.publishAsync(syncTopics(this.options.prefix, tenantId).reply(deviceId), JSON.stringify(signed), { qos: 1 });
  }

  /**
   * Parses a device's message and checks its MAC under the tenant's current key version (a tenant
   * this hub does not hold is refused too). `oldKey`: made under an older version, by a device
   * that has not yet received the new one (or by a device revoked since).
   */
  async #authentic<S extends z.ZodType<{ auth: MessageAuth }>>(
    tenantId: string,
    purpose: MessagePurpose,
    schema: S,
    payload: Buffer,
  ): Promise<{ ok: true; value: z.output<S> } | { ok: false; problem: string; oldKey?: boolean }> {
    const msg = parseMessage(schema, payload);
    if (!msg.ok) return msg;
    let key: TenantKey;
    try {
      key = await this.store.keys.current(tenantId);
    } catch (err) {
      if (err instanceof HubError) return { ok: false, problem: err.message };
      throw err;
    }
    if (msg.value.auth.key_version < key.keyVersion) return { ok: false, problem: `made under key version ${msg.value.auth.key_version}; the tenant's is ${key.keyVersion}`, oldKey: true };
    if (!isAuthentic((v) => (v === key.keyVersion ? key.key : undefined), purpose, tenantId, msg.value)) return { ok: false, problem: 'not authenticated by the tenant key (forged or altered)' };
    return msg;
  }

  async #isRevoked(tenantId: string, deviceId: string): Promise<boolean> {
    let known = this.#revoked.get(tenantId);
    if (!known || Date.now() - known.at > REVOKED_TTL_MS) {
      known = { ids: await this.store.devices.revoked(tenantId), at: Date.now() };
      this.#revoked.set(tenantId, known);
    }
    return known.ids.has(deviceId);
  }

  /** Sends a device its notice again (retained), at most once per RENOTICE_INTERVAL_MS. */
  async #renotice(tenantId: string, deviceId: string): Promise<void> {
    const id = `${tenantId}/${deviceId}`;
    if (Date.now() - (this.#renoticed.get(id) ?? 0) < RENOTICE_INTERVAL_MS) return;
    this.#renoticed.set(id, Date.now());
    const sent = await sendNotice(this.store, this.options.prefix, (topic, payload) => this.client.publishAsync(topic, payload, { qos: 1, retain: true }).then(() => undefined), tenantId, deviceId);
    if (sent) this.options.logger.info({ tenant: tenantId, device: deviceId, notice: sent.kind }, 'hub: a device was sent its notice again');
  }

  /**
   * Queues a sequenced change for the tenant's log. The changes committed together go out together:
   * one message of up to MAX_CHANGES_PER_BATCH, one head, so a door applies them in one transaction.
   * The log carries no further templates (every device takes it, those of an earlier release too):
   * a device that takes them fetches an upsert from its own reply topic.
   */
  #queueChange(tenantId: string, change: Change): void {
    const queue = this.#outgoing.get(tenantId) ?? [];
    queue.push(change);
    this.#outgoing.set(tenantId, queue);
    if (queue.length === 1) setImmediate(() => void this.#publishQueued(tenantId).catch((err: Error) => this.options.logger.warn({ tenant: tenantId, problem: err.message }, 'hub: publishing failed (devices will fetch)')));
  }

  async #publishQueued(tenantId: string): Promise<void> {
    const changes = (this.#outgoing.get(tenantId) ?? []).map(({ templates: _, ...c }: Change & { templates?: unknown }) => c as Change);
    this.#outgoing.delete(tenantId);
    const topics = syncTopics(this.options.prefix, tenantId);
    for (let i = 0; i < changes.length; i += MAX_CHANGES_PER_BATCH) {
      await this.client.publishAsync(topics.log, JSON.stringify({ tenant_id: tenantId, changes: changes.slice(i, i + MAX_CHANGES_PER_BATCH) }), { qos: 1 });
    }
    const head = Math.max(...changes.map((c) => c.seq));
    await this.client.publishAsync(topics.head, JSON.stringify({ tenant_id: tenantId, seq: head }), { qos: 1, retain: true });
  }
}
