import crypto from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import type { Logger } from '../core/logger.ts';
import { syncClientOptions } from '../sync/client-options.ts';
import {
  type Change,
  type Submission,
  type SubmittedChange,
  type SentMark,
  type SyncReply,
  type UserPin,
  type UserUpsert,
  MAX_CHANGES_PER_BATCH,
  MAX_CHUNK_BYTES,
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
import { EnvelopeError, type MessageAuth, type MessagePurpose, authenticate, isAuthentic } from '../sync/envelope.ts';
import { openFleetPin } from '../sync/pin-envelope.ts';
import { HUB_SENDER, type SignedPurpose, isSignedBy, signMessage } from '../sync/signature.ts';
import { publicKeyFromBase64 } from '../access/signed-command.ts';
import type { SignedCommand } from '../access/signed-command.ts';
import { Waiters } from '../core/waiters.ts';
import { HubError } from './errors.ts';
import { isDatabaseUnavailable } from '../errors.ts';
import type { TenantKey } from './keys.ts';
import { sendNotice } from './revocation.ts';
import { ReplayGuard } from './replay-guard.ts';
import type { AppendResult, HubStore } from './store.ts';

/** What a device answers a command with (access/remote-commands.ts), signed by the device (`from`, `sig`) since this release. */
const commandReplySchema = z.object({
  request_id: z.string().nullable(),
  command: z.string(),
  door: z.string(),
  ok: z.boolean(),
  error: z.string().optional(),
  from: z.string().optional(),
  sig: z.string().optional(),
});
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

/** How long the hub uses its list of a tenant's devices (their keys, revoked or not) before reading it again (a join or a revocation is made elsewhere). */
const SENDERS_TTL_MS = 1000;
/** A name not in the list is looked up again if the list is older than this. */
const UNKNOWN_RELOAD_MS = 100;

/**
 * Fetch and snapshot requests a device may make: a bucket of this many, refilled at this rate per
 * second. A door loading 100,000 people asks about 100 times (16 chunks an answer); a door (or its
 * stolen keys) asking in a loop is answered at this rate and no faster (#withinRate).
 */
const REQUEST_BURST = 50;
const REQUESTS_PER_SECOND = 10;

/** What the hub knows of a device that sends it messages. */
interface Sender {
  /** Its signing key; null for a device that joined with an earlier release (heard on the tenant key alone). */
  signingKey: crypto.KeyObject | null;
  /** The signing key as registered (base64), naming the device's replay marks. */
  signingKeyId: string | null;
  revoked: boolean;
  /** The boot its last state reported (a message of an earlier boot is a replay). */
  boot: number | null;
}

/** A device is sent its notice again at most this often (it speaks under an old key, or after its revocation). */
const RENOTICE_INTERVAL_MS = 10_000;

/** How often the hub republishes each tenant's head, so a device that missed a message finds out. */
const HEAD_INTERVAL_MS = 5000;
/** While the database is away (a failover), the heads are tried this often: the new primary's epoch reaches the doors soon after it takes writes. */
const HEAD_RETRY_MS = 500;

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
  #retrying: NodeJS.Timeout | undefined;
  #databaseAway = false;
  /** Sequenced changes waiting to be published, per tenant. */
  readonly #outgoing = new Map<string, Change[]>();
  /** Commands sent and waiting for their result, by request id. */
  readonly #commands = new Waiters<CommandReply>();
  /** The device each command waiting for its result was sent to: only that device may answer it. */
  readonly #commanded = new Map<string, { tenantId: string; deviceId: string }>();
  /** Set by the hub's API once its 1:N index is loaded; until then fleet checks are refused as `hub_starting`. */
  fleetCheck: FleetCheck | null = null;
  #closing = false;
  /** Each tenant's joined devices, and when the list was read. */
  readonly #senders = new Map<string, { byId: Map<string, Sender>; at: number }>();
  /** Each tenant's command key: the hub signs what it sends with it (the devices hold its public half). */
  readonly #hubKeys = new Map<string, crypto.KeyObject>();
  /** The last message taken of each device, per purpose: a replay of an earlier one is refused. */
  readonly #replays = new ReplayGuard();
  /** Requests left to each device (`tenant/device`) and when the bucket was last filled. */
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  /** Per device, its newest request waiting for the bucket to refill. */
  readonly #waiting = new Map<string, { answer: () => Promise<void> }>();
  /** When each device (`tenant/device`) was last sent its notice again, or logged as unknown. */
  readonly #renoticed = new Map<string, number>();

  private constructor(
    private readonly client: MqttClient,
    private readonly store: HubStore,
    private readonly options: HubSyncOptions,
  ) {
    this.#timer = setInterval(() => void this.#publishHeadsOrRetry(), HEAD_INTERVAL_MS);
    this.#timer.unref();
  }

  static async start(store: HubStore, options: HubSyncOptions): Promise<HubSync> {
    const clientOptions = syncClientOptions('authface-hub', { username: options.username, password: options.password, ...(options.ca ? { ca: options.ca } : {}) });
    const client = await mqtt.connectAsync(options.url, clientOptions);
    const hub = new HubSync(client, store, options);
    // a failover: the doors hear the new epoch at once (they check their place in the log before
    // they apply anything more), not at the next round of heads
    store.onEpochChange((epoch, before) => {
      if (before === null) return;
      options.logger.warn({ epoch, before }, "hub: the database's log is in a new epoch (a failover or a recovery); the heads are published again");
      void hub.publishHeads().catch((err: Error) => options.logger.warn({ problem: err.message }, 'hub: cannot publish the heads now'));
    });
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
  async sendCommand(tenantId: string, deviceId: string, command: SignedCommand, ms: number): Promise<CommandReply | null> {
    const requestId = command.request_id;
    if (!requestId) throw new Error('a command the hub sends carries a request_id');
    const answered = this.#commands.wait(requestId, ms);
    this.#commanded.set(requestId, { tenantId, deviceId });
    try {
      await this.client.publishAsync(`${this.options.prefix}/${deviceId}/command`, JSON.stringify(command), { qos: 1 });
      return await answered;
    } finally {
      this.#commanded.delete(requestId);
    }
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

  /** Publishes every tenant's head (retained): signed, and unsigned while the tenant has a device of an earlier release. */
  async publishHeads(): Promise<void> {
    for (const h of await this.store.heads()) await this.#publishHead(h.tenantId, h.seq);
  }

  /**
   * The periodic heads. The database may be away a moment (a failover): they are tried again every
   * HEAD_RETRY_MS until it answers, and the connection that finds the promoted standby tells the
   * doors its epoch (store.onEpochChange) without waiting for the next round.
   */
  async #publishHeadsOrRetry(): Promise<void> {
    if (this.#retrying || this.#closing) return;
    try {
      await this.publishHeads();
      if (this.#databaseAway) this.options.logger.info({}, 'hub: the database answers again; the heads are published');
      this.#databaseAway = false;
    } catch (err) {
      // said once while it lasts (a retry every HEAD_RETRY_MS would fill the log)
      if (!this.#databaseAway) this.options.logger.warn({ problem: (err as Error).message }, 'hub: cannot publish the heads now');
      if (!isDatabaseUnavailable(err)) return;
      this.#databaseAway = true;
      this.#retrying = setTimeout(() => {
        this.#retrying = undefined;
        void this.#publishHeadsOrRetry();
      }, HEAD_RETRY_MS);
      this.#retrying.unref();
    }
  }

  async #publishHead(tenantId: string, seq: number): Promise<void> {
    const topics = syncTopics(this.options.prefix, tenantId);
    await this.#send(tenantId, topics.signedHead, 'head', { tenant_id: tenantId, seq, ...this.#epoch() }, { retain: true });
    if (await this.#hasUnsignedDevices(tenantId)) await this.client.publishAsync(topics.head, JSON.stringify({ tenant_id: tenantId, seq }), { qos: 1, retain: true });
  }

  /**
   * Leaves the broker without waiting for publishes still in flight: the log in PostgreSQL holds
   * every change, and devices fetch what they missed.
   */
  async close(): Promise<void> {
    this.#closing = true;
    clearInterval(this.#timer);
    clearTimeout(this.#retrying);
    await this.client.endAsync(true);
  }

  async #message(topic: string, payload: Buffer): Promise<void> {
    if (this.#closing) return;
    if (topic.endsWith('/command/result')) return this.#commandResult(topic, payload);
    const levels = topic.slice(this.options.prefix.length + 1).split('/'); // sync/<tenant>/<kind>/<device>
    const [, tenantId, kind, device] = levels;
    if (levels.length !== 4 || payload.length === 0) return; // a retained message being cleared
    const topics = syncTopics(this.options.prefix, tenantId);
    // only a device that joined the tenant is heard; a revoked one is told again that it is
    // revoked (its broker client is gone too, where the hub manages it), and erases what it holds
    const sender = await this.#sender(tenantId, device);
    if (!sender) return this.#unknownDevice(tenantId, device, kind);
    if (sender.revoked) return this.#renotice(tenantId, device);
    /**
     * Whether a message is the device's own: for its topic, signed by its key (if it registered
     * one), and newer than the last the hub took of it for this purpose (not a replay).
     */
    const own = (purpose: SignedPurpose, value: { device_id: string; sent?: SentMark }, raw: object, lastWill = false): boolean => {
      if (value.device_id !== device) return false;
      if (sender.signingKey === null || sender.signingKeyId === null) return true;
      return isSignedBy(sender.signingKey, purpose, tenantId, raw) && value.sent !== undefined && this.#replays.take(sender.signingKeyId, purpose, value.sent, sender.boot, lastWill);
    };
    // a device of this release signs its requests and gets signed answers bound to them; one of an
    // earlier release gets them in the form it reads
    const signedForm = (raw: object) => sender.signingKey !== null || 'sig' in raw;
    if (kind === 'state') {
      const msg = await this.#authentic(tenantId, 'state', deviceStateSchema, payload);
      if (!msg.ok && msg.oldKey) await this.#renotice(tenantId, device);
      if (!msg.ok || msg.value.tenant_id !== tenantId || !own('state', msg.value, msg.raw, msg.value.state === 'offline')) {
        return this.options.logger.warn({ tenant: tenantId, device, problem: msg.ok ? "not the device's own (another device's topic, not signed by its key, or a replay)" : msg.problem }, 'hub: a device state was refused');
      }
      const { diverged, ahead, repair } = await this.store.devices.recordState(msg.value);
      if (ahead) this.options.logger.warn({ tenant: tenantId, device, applied_seq: msg.value.applied_seq, repair }, "hub: a device applied changes beyond the log's head (rewound by a database failover?); it loads a snapshot");
      else if (diverged) this.options.logger.warn({ tenant: tenantId, device, repair }, "hub: a device's user set differs from the hub's at the same sequence (flagged; it reloads a snapshot)");
      if (repair) {
        // the snapshot makes the device hold exactly the hub's people, then the log follows
        const head = await this.store.headSeq(tenantId);
        if (signedForm(msg.raw)) await this.#send(tenantId, topics.reply(device), 'repair', { type: 'repair', tenant_id: tenantId, device_id: device, digest: msg.value.digest ?? '', head });
        else await this.client.publishAsync(topics.reply(device), JSON.stringify({ type: 'range', tenant_id: tenantId, head, changes: [], snapshot: true }), { qos: 1 });
      }
      return;
    }
    if (kind === 'submit') {
      const msg = await this.#authentic(tenantId, 'submission', submissionSchema, payload);
      if (!msg.ok && msg.oldKey) await this.#renotice(tenantId, device);
      if (!msg.ok) return this.options.logger.warn({ tenant: tenantId, device, problem: msg.problem }, 'hub: a submission was refused');
      if (!own('submission', msg.value, msg.raw)) return this.options.logger.warn({ tenant: tenantId, device }, "hub: a submission not the device's own (another device's topic, not signed by its key, or a replay) was refused");
      const { ack, change } = await this.#sequenceSubmission(tenantId, msg.value);
      if (change && msg.value.lost_deletion) await this.#lostDeletion(tenantId, device, change);
      await this.#reply(tenantId, device, ack, signedForm(msg.raw));
      if (change) this.#queueChange(tenantId, change);
    } else if (kind === 'events') {
      const msg = await this.#authentic(tenantId, 'events', doorEventsSchema, payload);
      if (!msg.ok && msg.oldKey) await this.#renotice(tenantId, device);
      if (!msg.ok) return this.options.logger.warn({ tenant: tenantId, device, problem: msg.problem }, 'hub: door events were refused');
      if (!own('events', msg.value, msg.raw)) return this.options.logger.warn({ tenant: tenantId, device }, "hub: door events not the device's own (another device's topic, not signed by its key, or a replay) were refused");
      const held = await this.store.recordDoorEvents(tenantId, msg.value);
      await this.#reply(tenantId, device, { type: 'events_ack', event_ids: held }, signedForm(msg.raw));
    } else if (kind === 'fetch') {
      const msg = parseMessage(fetchRequestSchema, payload);
      if (!msg.ok) return this.options.logger.warn({ tenant: tenantId, device, problem: msg.problem }, 'hub: a fetch was refused');
      if (!own('fetch', msg.value, msg.raw)) return this.options.logger.warn({ tenant: tenantId, device }, "hub: a fetch not the device's own (another device's topic, not signed by its key, or a replay) was refused");
      await this.#withinRate(tenantId, device, () => this.#answerFetch(tenantId, device, msg.value, signedForm(msg.raw)));
    } else if (kind === 'snapshot') {
      const msg = parseMessage(snapshotRequestSchema, payload);
      if (!msg.ok) return this.options.logger.warn({ tenant: tenantId, device, problem: msg.problem }, 'hub: a snapshot request was refused');
      if (!own('snapshot', msg.value, msg.raw)) return this.options.logger.warn({ tenant: tenantId, device }, "hub: a snapshot request not the device's own (another device's topic, not signed by its key, or a replay) was refused");
      await this.#withinRate(tenantId, device, () => this.#answerSnapshot(tenantId, device, msg.value, signedForm(msg.raw)));
    }
  }

  /** Answers a snapshot request: several chunks (a round trip per chunk would cost more than applying it). */
  async #answerSnapshot(tenantId: string, device: string, request: z.output<typeof snapshotRequestSchema>, signedForm: boolean): Promise<void> {
    const { request_id } = request;
    let after = request.after;
    for (let i = 0; i < request.chunks; i++) {
      const chunk = await this.store.snapshotChunk(tenantId, after, Math.min(request.limit, MAX_USERS_PER_CHUNK), request);
      const more = chunk.next !== null && i < request.chunks - 1;
      // the last chunk says where the snapshot is complete: the head and the digest of the hub's people there
      const end = chunk.next === null && signedForm ? await this.store.headDigest(tenantId) : {};
      // a device of an earlier release takes the tenant's settings without the anti-spoofing floor
      const tenant = chunk.tenant && !signedForm ? { tenant: withoutPadThreshold(chunk.tenant) } : {};
      // a device of this release names the change at the first chunk's head when it fetches from there
      const seqChangeId = signedForm && after === null ? await this.store.changeIdAt(tenantId, chunk.seq) : null;
      const epoch = signedForm ? { ...this.#epoch(), ...(seqChangeId ? { seq_change_id: seqChangeId } : {}) } : {};
      await this.#reply(tenantId, device, { type: 'snapshot', tenant_id: tenantId, after, ...chunk, ...tenant, more, ...end, ...epoch, ...(request_id ? { request_id } : {}) }, signedForm);
      if (!more) break;
      after = chunk.next;
    }
  }

  /**
   * Answers a fetch: the ranges after the device's cursor; "load a snapshot" for a new device or
   * one behind the retained log; `rewound` for a device whose place in the log is not the hub's.
   */
  async #answerFetch(tenantId: string, device: string, request: z.output<typeof fetchRequestSchema>, signedForm: boolean): Promise<void> {
    const topic = syncTopics(this.options.prefix, tenantId).reply(device);
    let head = await this.store.headSeq(tenantId);
    const { after, request_id } = request;
    const bound = request_id ? { request_id } : {};
    const send = async (range: Record<string, unknown>, json?: string) => {
      if (signedForm) await this.#send(tenantId, topic, 'reply', { type: 'range', tenant_id: tenantId, head, ...range, ...this.#epoch(), ...bound, device_id: device });
      else await this.client.publishAsync(topic, json ?? JSON.stringify({ type: 'range', tenant_id: tenantId, head, ...range }), { qos: 1 });
    };
    // a device ahead of the log, or whose last change is not the log's at that number, applied
    // changes the log no longer has: the log was rewound (the database failed over and lost its
    // last commits), and the numbers after it may since have gone to other changes
    const rewound = after > head || (request.after_change_id !== undefined && after > 0 && (await this.#otherChangeAt(tenantId, after, request.after_change_id)));
    if (rewound) this.options.logger.warn({ tenant: tenantId, device, applied_seq: after, head }, "hub: a device applied changes the log no longer holds (rewound by a database failover); it compares its people with the hub's");
    if (rewound && signedForm) {
      // the device takes the hub's head if it holds the same people there, and loads a snapshot if not
      const at = await this.store.headDigest(tenantId);
      head = at.head;
      const headChangeId = await this.store.changeIdAt(tenantId, head);
      return send({ changes: [], rewound: true, digest: at.digest, ...(headChangeId ? { head_change_id: headChangeId } : {}) });
    }
    if ((after === 0 && head > 0) || rewound || after < (await this.store.compactedSeq(tenantId))) return send({ changes: [], snapshot: true });
    // several ranges per request, relayed as PostgreSQL writes them (a door far behind, or two
    // hundred reconnecting at once, must not cost the hub a round trip each)
    const limit = Math.min(request.limit, MAX_CHANGES_PER_BATCH);
    let from = after;
    for (let i = 0; i < request.batches; i++) {
      const page = await this.store.changesAfterJson(tenantId, from, limit, request);
      // a range that carries further templates may end before `limit` (MAX_CHUNK_BYTES)
      const more = page.count > 0 && page.last < head && i < request.batches - 1;
      const legacy = `{"type":"range","tenant_id":${JSON.stringify(tenantId)},"head":${head},"changes":${page.json}${more ? ',"more":true' : ''}}`;
      await send(signedForm ? { changes: JSON.parse(page.json) as unknown[], ...(more ? { more } : {}) } : {}, legacy);
      if (!more) break;
      from = page.last;
    }
  }

  /**
   * A deletion a door had applied and the log lost in a failover, sequenced again: the admin is
   * told (an alarm in the console's activity, and the hub's log), since the person was briefly
   * back at the hub and at doors that loaded its snapshot.
   */
  async #lostDeletion(tenantId: string, device: string, change: Change): Promise<void> {
    this.options.logger.error({ tenant: tenantId, device, seq: change.seq }, "hub: a deletion the database lost in a failover was sent again by a door and is sequenced again; the person is erased everywhere");
    await this.store.recordAlarm(tenantId, 'deletion_lost', `a deletion lost in a database failover, sent again by ${device}, is sequenced again at ${change.seq}`);
  }

  /** Whether the log holds another change than `changeId` at `seq` (a number compacted away is not judged). */
  async #otherChangeAt(tenantId: string, seq: number, changeId: string): Promise<boolean> {
    const held = await this.store.changeIdAt(tenantId, seq);
    return held !== null && held !== changeId;
  }

  /** The epoch of the log, for what the hub signs (left out while the database has not said). */
  #epoch(): { epoch?: string } {
    const epoch = this.store.epoch;
    return epoch === null ? {} : { epoch };
  }

  /**
   * A door's answer to a command the hub sent: taken only from the commanded door's own result
   * topic, for a request the hub is waiting on, and signed by that door's key (a door of an
   * earlier release signs nothing: its answer is taken on the topic alone).
   */
  async #commandResult(topic: string, payload: Buffer): Promise<void> {
    const raw = safeJson(payload);
    const parsed = commandReplySchema.safeParse(raw);
    if (!parsed.success || !parsed.data.request_id) return;
    const reply = parsed.data;
    const waiting = this.#commanded.get(reply.request_id!);
    if (!waiting || topic !== `${this.options.prefix}/${waiting.deviceId}/command/result`) return;
    const sender = await this.#sender(waiting.tenantId, waiting.deviceId);
    if (!sender || sender.revoked) return;
    if (sender.signingKey && !(reply.from === waiting.deviceId && isSignedBy(sender.signingKey, 'command-result', waiting.tenantId, raw as object))) {
      return this.options.logger.warn({ device: waiting.deviceId }, "hub: an answer to a command not signed by the commanded door's key was refused");
    }
    this.#commanded.delete(reply.request_id!);
    this.#commands.settle(reply.request_id!, reply);
  }

  /**
   * Sequences a device's submission; returns the ack for the device, and the change to publish
   * (none for a retry: its change went out when it was sequenced). An enrolment the door waits on
   * passes the fleet's duplicate check first; when another template is sequenced between that
   * check and the append (another hub process, another door), it is checked again.
   */
  async #sequenceSubmission(tenantId: string, submission: Submission): Promise<{ ack: Unsigned<SyncReply>; change?: Change }> {
    const { device_id, change_id, body } = submission;
    if (body.kind === 'user.pin') return this.#sequencePin(tenantId, device_id, change_id, body);
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
      const result = await this.store.append(tenantId, checked.body, { origin: device_id, changeId: change_id, checkedThrough: checked.checkedThrough, lostDeletion: submission.lost_deletion });
      if (result.status === 'recheck') continue;
      // a door kept a person erased whom a snapshot brought back, but the hub no longer holds them below that deletion
      if (result.status === 'not_lost') return { ack: { type: 'ack', change_id, status: 'refused', seq: null, reason: 'not_lost' } };
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

  /**
   * A PIN set or removed at a door, which waits for the answer: sequenced as the hub's own change
   * for an enrolled person. Its verifier must open here, sealed for that person under the current
   * key version: a change that does not open on the doors would stop their log.
   */
  async #sequencePin(tenantId: string, deviceId: string, changeId: string, body: UserPin): Promise<{ ack: Unsigned<SyncReply>; change?: Change }> {
    const refuse = (reason: string) => ({ ack: { type: 'ack' as const, change_id: changeId, status: 'refused' as const, seq: null, reason } });
    if (body.pin) {
      const sealedWith = await this.store.keys.version(tenantId, body.pin.key_version);
      try {
        if (!sealedWith) throw new EnvelopeError('wrong_key', `no key version ${body.pin.key_version}`);
        openFleetPin(sealedWith.key, body.pin, { tenantId, externalUserId: body.external_user_id });
      } catch (err) {
        if (!(err instanceof EnvelopeError)) throw err;
        return refuse('pin_unreadable');
      }
    }
    const result = await this.store.setPin(tenantId, body.external_user_id, body.pin, { made: { changeId, origin: deviceId }, auditedAs: `device ${deviceId}` });
    if ('refused' in result) return refuse(result.refused);
    this.options.logger.info({ tenant: tenantId, device: deviceId, seq: result.change.seq, pin: body.pin ? 'set' : 'removed' }, "hub: a door's PIN change sequenced");
    return { ack: { type: 'ack', change_id: changeId, status: 'sequenced', seq: result.change.seq, reason: null }, change: result.change };
  }

  /**
   * Authenticates a reply to one device with the tenant key and sends it; in the signed form also
   * addressed to the device and signed by the hub.
   */
  async #reply(tenantId: string, deviceId: string, reply: Unsigned<SyncReply>, signedForm: boolean): Promise<void> {
    const key = await this.store.keys.current(tenantId);
    const topic = syncTopics(this.options.prefix, tenantId).reply(deviceId);
    if (signedForm) await this.#send(tenantId, topic, 'reply', authenticate(key, 'reply', tenantId, { ...reply, device_id: deviceId }));
    else await this.client.publishAsync(topic, JSON.stringify(authenticate(key, 'reply', tenantId, reply)), { qos: 1 });
  }

  /** Signs a message with the tenant's command key (`from: hub`) and publishes it. */
  async #send(tenantId: string, topic: string, purpose: SignedPurpose, message: object, options: { retain?: boolean } = {}): Promise<void> {
    const signed = signMessage(await this.#hubKey(tenantId), purpose, tenantId, { ...message, from: HUB_SENDER });
    await this.client.publishAsync(topic, JSON.stringify(signed), { qos: 1, retain: options.retain ?? false });
  }

  async #hubKey(tenantId: string): Promise<crypto.KeyObject> {
    let key = this.#hubKeys.get(tenantId);
    if (!key) {
      key = (await this.store.keys.commandKey(tenantId)).privateKey;
      this.#hubKeys.set(tenantId, key);
    }
    return key;
  }

  /** A device of the tenant that joined (its signing key, whether revoked); undefined for any other name. */
  async #sender(tenantId: string, deviceId: string): Promise<Sender | undefined> {
    // a device that has just joined is not in a list read before: read it again (at most every
    // UNKNOWN_RELOAD_MS, so made-up names cost the database nothing more)
    return (await this.#devicesOf(tenantId)).get(deviceId) ?? (await this.#devicesOf(tenantId, UNKNOWN_RELOAD_MS)).get(deviceId);
  }

  async #devicesOf(tenantId: string, maxAge = SENDERS_TTL_MS): Promise<Map<string, Sender>> {
    let known = this.#senders.get(tenantId);
    if (!known || Date.now() - known.at > maxAge) {
      let rows: Awaited<ReturnType<HubStore['devices']['senders']>>;
      try {
        rows = await this.store.devices.senders(tenantId);
      } catch (err) {
        // a topic naming no tenant of this hub (not a UUID, or unknown) has no devices
        if ((err as { code?: string }).code === '22P02') rows = new Map();
        else throw err;
      }
      const byId = new Map<string, Sender>();
      for (const [id, d] of rows) byId.set(id, { signingKey: d.signingKey ? publicKeyFromBase64(d.signingKey) : null, signingKeyId: d.signingKey, revoked: d.revoked, boot: d.boot });
      known = { byId, at: Date.now() };
      this.#senders.set(tenantId, known);
    }
    return known.byId;
  }

  /** Whether the tenant still has a device of an earlier release, which reads the unsigned log. */
  async #hasUnsignedDevices(tenantId: string): Promise<boolean> {
    for (const d of (await this.#devicesOf(tenantId)).values()) if (!d.revoked && !d.signingKey) return true;
    return false;
  }

  /**
   * Answers a device's request now if its bucket holds one (REQUEST_BURST, refilled at
   * REQUESTS_PER_SECOND), else as soon as it does. Only the newest request of a device waits: a
   * later one replaces it, so a device asking in a loop costs the hub one answer per refill, and a
   * real door that asks a lot is slowed, never dropped.
   */
  async #withinRate(tenantId: string, deviceId: string, answer: () => Promise<void>): Promise<void> {
    const id = `${tenantId}/${deviceId}`;
    const waiting = this.#waiting.get(id);
    if (waiting) {
      waiting.answer = answer;
      return;
    }
    const now = Date.now();
    const bucket = this.#buckets.get(id) ?? { tokens: REQUEST_BURST, at: now };
    bucket.tokens = Math.min(REQUEST_BURST, bucket.tokens + ((now - bucket.at) / 1000) * REQUESTS_PER_SECOND);
    bucket.at = now;
    this.#buckets.set(id, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return answer();
    }
    const later = { answer };
    this.#waiting.set(id, later);
    const timer = setTimeout(() => {
      this.#waiting.delete(id);
      if (!this.#closing) void this.#withinRate(tenantId, deviceId, later.answer).catch((err: Error) => this.options.logger.warn({ tenant: tenantId, device: deviceId, problem: err.message }, 'hub: a delayed answer failed'));
    }, Math.ceil(((1 - bucket.tokens) / REQUESTS_PER_SECOND) * 1000));
    timer.unref();
    this.options.logger.debug({ tenant: tenantId, device: deviceId }, 'hub: a device asks faster than its rate; its newest request waits');
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
  ): Promise<{ ok: true; value: z.output<S>; raw: object } | { ok: false; problem: string; oldKey?: boolean }> {
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

  /**
   * A message in the name of a device that has not joined the tenant: nothing is answered. It is
   * logged once per RENOTICE_INTERVAL_MS and name (a door set up by hand before this release must
   * be registered: `authface hub wrap-key`), so made-up names cannot flood the log.
   */
  #unknownDevice(tenantId: string, deviceId: string, kind: string): void {
    const id = `unknown:${tenantId}/${deviceId}`;
    if (Date.now() - (this.#renoticed.get(id) ?? 0) < RENOTICE_INTERVAL_MS) return;
    if (this.#renoticed.size > 10_000) this.#renoticed.clear();
    this.#renoticed.set(id, Date.now());
    this.options.logger.warn({ tenant: tenantId, device: deviceId, kind }, 'hub: a message in the name of a device that has not joined this tenant was ignored (register a door set up by hand with authface hub wrap-key)');
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
   * messages of up to MAX_CHANGES_PER_BATCH changes and MAX_CHUNK_BYTES, one head, so a door
   * applies them in few transactions. The signed log carries each person's further templates (only
   * devices of this release read it); the unsigned one, for devices of an earlier release, does not.
   */
  #queueChange(tenantId: string, change: Change): void {
    const queue = this.#outgoing.get(tenantId) ?? [];
    queue.push(change);
    this.#outgoing.set(tenantId, queue);
    if (queue.length === 1) setImmediate(() => void this.#publishQueued(tenantId).catch((err: Error) => this.options.logger.warn({ tenant: tenantId, problem: err.message }, 'hub: publishing failed (devices will fetch)')));
  }

  async #publishQueued(tenantId: string): Promise<void> {
    const changes = this.#outgoing.get(tenantId) ?? [];
    this.#outgoing.delete(tenantId);
    const topics = syncTopics(this.options.prefix, tenantId);
    const unsigned = await this.#hasUnsignedDevices(tenantId);
    for (const batch of batches(changes)) {
      await this.#send(tenantId, topics.signedLog, 'log', { tenant_id: tenantId, changes: batch, ...this.#epoch() });
      if (unsigned) await this.client.publishAsync(topics.log, JSON.stringify({ tenant_id: tenantId, changes: batch.map(forEarlierRelease) }), { qos: 1 });
    }
    await this.#publishHead(tenantId, Math.max(...changes.map((c) => c.seq)));
  }
}

/** Changes in messages of at most MAX_CHANGES_PER_BATCH and MAX_CHUNK_BYTES (a first change always goes). */
function batches(changes: readonly Change[]): Change[][] {
  const out: Change[][] = [];
  let current: Change[] = [];
  let bytes = 0;
  for (const change of changes) {
    const size = JSON.stringify(change).length;
    if (current.length > 0 && (current.length === MAX_CHANGES_PER_BATCH || bytes + size > MAX_CHUNK_BYTES)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(change);
    bytes += size;
  }
  if (current.length > 0) out.push(current);
  return out;
}

/**
 * A change as a device of an earlier release reads it: without the fields its schema does not know
 * (further templates, a tenant's anti-spoofing floor), which the change's MAC does not cover.
 */
function forEarlierRelease({ templates: _, ...change }: Change & { templates?: unknown }): Change {
  return (change.kind === 'tenant.settings' ? withoutPadThreshold(change) : change) as Change;
}

function withoutPadThreshold<T extends { pad_threshold?: number }>({ pad_threshold: _, ...settings }: T): Omit<T, 'pad_threshold'> {
  return settings;
}
