import crypto from 'node:crypto';
import fs from 'node:fs';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { GalleryIndex } from '../biometrics/gallery.ts';
import type { EventBus } from '../core/events.ts';
import type { Logger } from '../core/logger.ts';
import { Waiters } from '../core/waiters.ts';
import { markForwarded, unforwardedDoorEvents } from '../store/audit.ts';
import type { Store } from '../store/index.ts';
import { syncClientOptions } from './client-options.ts';
import { type MessageAuth, type MessagePurpose, authenticate, isAuthentic, sealTemplate } from './envelope.ts';
import {
  type DeviceState,
  type DoorEvents,
  type ModelTemplate,
  type SentMark,
  type SubmittedChange,
  type UserPin,
  MAX_CHANGES_PER_BATCH,
  MAX_EVENTS_PER_BATCH,
  MAX_CHUNKS_PER_REQUEST,
  MAX_USERS_PER_CHUNK,
  changeBatchSchema,
  headSchema,
  parseMessage,
  replySchema,
  type SyncReply,
  syncTopics,
} from './protocol.ts';
import type { FleetVerdict } from '../sessions/service.ts';
import type { FleetWrite } from '../store/biometry-store.ts';
import type { Embeddings, ModelId } from '../biometrics/matchers/index.ts';
import type { LocalUserChange } from '../store/users.ts';
import { type ApplyResult, Replica } from './replica.ts';
import { type DeviceSigningKey, loadDeviceKey, loadSigningKey } from './device-key.ts';
import { type SignedPurpose, isSignedBy, signMessage } from './signature.ts';
import { type TenantKeyring, readKeyFile, unwrapKeys, writeKeyFile } from './keyring.ts';
import { fleetNoticeSchema, isSignedNotice } from './notice.ts';
import { HubClient } from './hub-client.ts';
import { wipeRevokedDevice } from './revoked.ts';
import { sealFleetPin } from './pin-envelope.ts';

/** How a PIN set at a door through the hub ended (the hub's refusal: `user_not_found`, `pin_not_found`, `stale_key`, …). */
export type PinVerdict = { status: 'sequenced' } | { status: 'refused'; reason: string } | { status: 'unreachable' };

const FETCH_TIMEOUT_MS = 5000;
/** CONNACK codes of a broker that turns the device away (MQTT 3: 4, 5; MQTT 5: 134, 135). */
const BROKER_REFUSALS = new Set([4, 5, 134, 135]);
/** How long a clean stop waits for the broker to take the device's offline state. */
const CLOSE_WAIT_MS = 2000;
/** The hub is asked for this device's notice at most this often. */
const ASK_HUB_INTERVAL_MS = 30_000;
/** Outbox changes sent ahead of the hub's acknowledgements. */
const OUTBOX_WINDOW = 200;
/**
 * A door event sent this long after it happened (both by this device's clock, so skew does not
 * matter) waited for the hub, and is marked delayed. Online, an event is sent within milliseconds.
 */
const DELAYED_AFTER_MS = 2000;
/** A burst of applied changes is reported in one state message, this long after the first. */
const STATE_DELAY_MS = 200;

export interface DeviceSyncOptions {
  deviceId: string;
  tenantId: string;
  url: string;
  prefix: string;
  /** Credentials and TLS of the broker (the device's mqtt section). */
  broker?: IClientOptions;
  /** The versions of the tenant key this device holds (unwrapped with its key pair). */
  keyring: TenantKeyring;
  /** Where the keyring is kept (sync.tenant_key_file): versions the hub sends later are added there. */
  keyFile?: string;
  /**
   * The hub's key (the tenant's command key, remote_commands.public_key, given at join): only what
   * it signed is taken from the hub: the log, the head, replies, notices.
   */
  hubKey: crypto.KeyObject;
  /** The hub's URL (sync.hub_url): asked for this device's notice when the broker turns it away. */
  hubUrl?: string;
  /** Files erased with the templates when the hub revokes this device (the broker password). */
  secretFiles?: string[];
  /** The model whose templates replicate (sync/fleet-model.ts). */
  model: ModelId;
  /** Software version, in the device's state. */
  softwareVersion?: string;
  /** The device's doors, in its state. */
  doors?: string[];
  logger: Logger;
}

/**
 * A device in the fleet: it applies its tenant's log from the hub (sync/replica.ts) and sends the
 * changes made here (enrolments, updates, deletions) to the hub to be sequenced. What it sends
 * waits in a durable outbox (SQLite), written in the transaction of the change itself, until the
 * hub acknowledges it: an enrolment made while the hub is unreachable is sent on reconnect, and a
 * crash right after a commit cannot lose one. Correctness never rests on the broker keeping
 * messages: on every connection, on every head the hub announces, and on every gap, the device
 * fetches what follows its cursor.
 */
export class DeviceSync {
  readonly replica: Replica;
  #fetching = false;
  /** When the last range or snapshot chunk of a request in flight arrived. */
  #lastAnswerAt = 0;
  /** Since the last (re)connection, the hub has said there is nothing after the cursor. */
  #caughtUp = false;
  #waiting: (() => void)[] = [];
  readonly #off: (() => void)[] = [];
  #eventsInFlight = false;
  /** Outbox changes sent and not yet acknowledged: change_id → when sent. */
  readonly #sentAt = new Map<string, number>();
  #flushScheduled = false;
  /** Enrolments waiting on the hub's fleet check: change_id → what to do with its ack. */
  readonly #awaitingHub = new Waiters<Extract<SyncReply, { type: 'ack' }>>();
  /** Enrolments the hub sequenced for this device (`user:version`): their local write is not sent again. */
  readonly #sequencedAtHub = new Set<string>();
  /** Starts of the sync client on this device (kept in the database). */
  readonly #boot: number;
  readonly #index: GalleryIndex;
  /** When the hub was last asked for this device's notice. */
  #askedHubAt = 0;
  #revoked = false;
  /** The service's event bus: the revocation is announced on it (the device stops serving at once). */
  #events: EventBus | null = null;
  /** The models other than the fleet's whose templates this device keeps (they travel as an upsert's `templates`). */
  readonly #furtherModels: ModelId[];
  /** This device's signing key: the hub takes a message in its name only with its signature. */
  readonly #signingKey: DeviceSigningKey;
  /** The fetch or snapshot request in flight: only replies that carry its id are applied. */
  #request: { id: string; kind: 'fetch' | 'snapshot' } | null = null;
  /**
   * The head of a rewound log (the hub's database failed over and lost its last commits), as the
   * hub's signed answer said when it had this device load a snapshot: that snapshot may be older
   * than this device's cursor, and is taken. Null otherwise: a snapshot never takes the device back.
   */
  #rewoundHead: number | null = null;
  /** The highest sequence the hub's signed log or head has shown this device. */
  #seenSeq = 0;
  /**
   * The hub's log is in another epoch than this device follows (its database failed over), or
   * holds another change at this device's place: nothing more is applied until the hub has
   * checked that place (#fetch names it), or this device holds the hub's people again.
   */
  #reconciling = false;
  /** The epoch that started the reconciliation, if one did: an answer of the epoch before it settles nothing. */
  #newEpoch: string | null = null;
  /** A complete snapshot is being made this device's copy. */
  #committing = false;
  /** Messages this device signed in this boot (their `sent` mark). */
  #sentCount = 0;
  /** When this device last asked the hub to register its signing key. */
  #registeredAt = 0;
  /** The hub's HTTP endpoints (sync.hub_url), if the device knows them. */
  readonly #hub: HubClient | null;

  private constructor(
    private readonly client: MqttClient,
    private readonly store: Store,
    private readonly options: DeviceSyncOptions,
    index: GalleryIndex,
    signingKey: DeviceSigningKey,
    boot: number,
  ) {
    this.#boot = boot;
    this.replica = new Replica(store, index, (tenantId) => (tenantId === options.tenantId ? options.keyring : undefined), options.model);
    this.#index = index;
    this.#furtherModels = store.users.models.filter((m) => m !== options.model);
    this.#signingKey = signingKey;
    this.#hub = options.hubUrl ? new HubClient(options.hubUrl, { tenantId: options.tenantId, deviceId: options.deviceId, signingKey: signingKey.privateKey, signingPublicKey: signingKey.publicKey }) : null;
    // what this device changes joins the outbox in the same transaction as the change itself
    store.users.changeJournal = (c) => {
      if (c.tenantId !== options.tenantId) return;
      if (c.kind === 'upsert' && this.#sequencedAtHub.delete(`${c.externalUserId}:${c.version}`)) return;
      if (c.kind === 'delete') this.replica.recordErasure(c.tenantId, c.externalUserId, c.version);
      store.db
        .prepare('INSERT INTO sync_outbox (change_id, tenant_id, external_user_id, kind, version, created_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(crypto.randomUUID(), c.tenantId, c.externalUserId, c.kind, c.version, new Date().toISOString());
      this.#flushSoon();
    };
  }

  static start(store: Store, index: GalleryIndex, events: EventBus, options: DeviceSyncOptions): DeviceSync {
    const topics = syncTopics(options.prefix, options.tenantId);
    const signingKey = loadSigningKey(store.dataDir);
    store.db.prepare(`INSERT INTO meta (key, value) VALUES ('sync_boot', 1) ON CONFLICT (key) DO UPDATE SET value = value + 1`).run();
    const boot = Number((store.db.prepare(`SELECT value FROM meta WHERE key = 'sync_boot'`).get() as { value: number }).value);
    const offline = offlineState(options, signingKey, boot);
    const clientOptions = {
      ...syncClientOptions(`authface-sync-${options.deviceId}`, options.broker ?? {}),
      will: { topic: topics.state(options.deviceId), payload: Buffer.from(JSON.stringify(offline)), qos: 1 as const, retain: true },
    };
    const client = mqtt.connect(options.url, clientOptions);
    const sync = new DeviceSync(client, store, options, index, signingKey, boot);
    sync.#events = events;
    // a snapshot complete before a crash is made this device's copy now, link or not
    if (sync.replica.snapshot(options.tenantId)?.complete) void sync.#commitSnapshot();
    // a door event goes to the hub as soon as it is recorded (and waits in the audit log if it cannot)
    sync.#off.push(events.on('access.decided', () => sync.flushEvents()), events.on('door.alarm', () => sync.flushEvents()));
    client.on('connect', () => {
      sync.#caughtUp = false;
      void sync.registerSigningKey();
      client
        .subscribeAsync([topics.signedLog, topics.signedHead, topics.reply(options.deviceId), topics.notice(options.deviceId)], { qos: 1 })
        .then(() => {
          sync.publishState();
          sync.fetch(true);
          sync.#sentAt.clear(); // a new connection: nothing sent before it counts as in flight
          sync.flush();
          sync.flushEvents(true);
        })
        .catch((err: Error) => options.logger.error({ problem: err.message }, 'sync: cannot subscribe'));
    });
    client.on('message', (topic, payload) => {
      try {
        sync.#message(topic, payload);
      } catch (err) {
        options.logger.error({ topic, problem: (err as Error).message }, 'sync: a message could not be applied');
      }
    });
    client.on('error', (err) => {
      options.logger.warn({ problem: err.message }, 'sync: broker error');
      // turned away by the broker: the hub may have revoked this device (and removed its client)
      if (BROKER_REFUSALS.has((err as Error & { code?: number }).code ?? 0)) void sync.askHub();
    });
    return sync;
  }

  get cursor(): number {
    return this.replica.cursor(this.options.tenantId);
  }

  get connected(): boolean {
    return this.client.connected;
  }

  /**
   * The device's retained state: online, the cursor, the digest of the users it holds, model,
   * software version and boot counter (Sparkplug-style; the last will says offline).
   */
  publishState(): void {
    if (!this.client.connected) return;
    const { deviceId, tenantId, model, softwareVersion } = this.options;
    const { digest, users } = this.store.users.digest(tenantId);
    const state = this.#signed('state', {
      device_id: deviceId,
      tenant_id: tenantId,
      state: 'online',
      applied_seq: this.cursor,
      digest,
      users,
      pending: this.pending(),
      model,
      version: softwareVersion,
      boot: this.#boot,
      doors: this.options.doors,
      time: new Date().toISOString(),
    } satisfies Omit<DeviceState, 'auth'>);
    this.client.publish(syncTopics(this.options.prefix, tenantId).state(deviceId), JSON.stringify(state), { qos: 1, retain: true });
  }

  /**
   * Commits an enrolment or update through the hub before it succeeds here: the hub checks the
   * face against the whole fleet and sequences it (at the version it gives). No answer within `ms`
   * (or no link): `unreachable`, and the door writes on its own check and queues the change.
   */
  async commitThroughHub(write: FleetWrite, ms: number): Promise<FleetVerdict> {
    const { tenantId, model, deviceId, logger } = this.options;
    const embedding = write.templates[model];
    // without the fleet model's template the hub cannot check it: the door decides, the outbox waits
    if (!this.client.connected || !embedding) return { status: 'unreachable' };
    const { key, keyVersion } = this.options.keyring.latest;
    const changeId = crypto.randomUUID();
    const externalUserId = write.kind === 'enroll' ? write.externalUserId : write.user.externalUserId;
    // an enrolment's version is a placeholder the envelope is bound to (the hub re-seals at the
    // fleet's); an update's says which copy it was made on
    const version = write.kind === 'enroll' ? 1 : write.user.version + 1;
    const template = sealTemplate(key, embedding, { tenantId, externalUserId, version, model, keyVersion });
    const answered = this.#awaitingHub.wait(changeId, ms);
    const templates = this.#sealFurther(write.templates, { externalUserId, version });
    const body: SubmittedChange = { kind: 'user.upsert', external_user_id: externalUserId, version, model, key_version: keyVersion, template, ...(templates.length > 0 ? { templates } : {}) };
    const submission = this.#signed('submission', { device_id: deviceId, change_id: changeId, body, fleet_check: write.kind });
    this.client.publish(syncTopics(this.options.prefix, tenantId).submit(deviceId), JSON.stringify(submission), { qos: 1 });
    const ack = await answered;
    if (!ack) {
      logger.warn({ wait_ms: ms }, "sync: the hub did not answer in time; written on this door's own check and queued");
      return { status: 'unreachable' };
    }
    if (ack.status === 'sequenced' && ack.version !== undefined) {
      this.#sequencedAtHub.add(`${externalUserId}:${ack.version}`);
      return { status: 'sequenced', version: ack.version };
    }
    const refusals: Record<string, 'conflict' | 'already_enrolled' | 'user_not_found'> = { duplicate_face: 'conflict', already_enrolled: 'already_enrolled', user_not_found: 'user_not_found' };
    const refusal = ack.status === 'refused' && ack.reason !== null ? refusals[ack.reason] : undefined;
    if (refusal) {
      logger.info({ reason: ack.reason, change: write.kind }, 'sync: the hub refused a template made here (the fleet already holds this face or id, or not the person)');
      return { status: 'refused', reason: refusal, score: ack.score ?? null };
    }
    if (ack.status === 'refused' && ack.reason === 'stale_version') {
      // the person has a newer template at the hub: fetch it, then decide again on it
      const newer = ack.version ?? version;
      this.fetch(true);
      const until = Date.now() + ms;
      while ((this.store.users.get(tenantId, externalUserId)?.version ?? 0) < newer && Date.now() < until) await new Promise((r) => setTimeout(r, 25));
      return { status: 'changed' };
    }
    logger.warn({ status: ack.status, reason: ack.reason }, "sync: the hub could not take a template made here; written on this door's own check and queued");
    return { status: 'unreachable' };
  }

  /**
   * Sets (or with null removes) a person's PIN through the hub while this door waits: the PIN's
   * verifier is made and sealed here, the hub sequences it for every door, and this door has
   * applied it when this returns `sequenced`. It is never queued: no answer within `ms` (or no
   * link) is `unreachable`, and the caller says so.
   */
  async setPinThroughHub(externalUserId: string, pin: string | null, ms: number): Promise<PinVerdict> {
    const { tenantId, deviceId } = this.options;
    if (!this.client.connected) return { status: 'unreachable' };
    const until = Date.now() + ms;
    const changeId = crypto.randomUUID();
    const sealed = pin === null ? null : await sealFleetPin(this.options.keyring.latest, { tenantId, externalUserId }, pin);
    const answered = this.#awaitingHub.wait(changeId, ms);
    const body: UserPin = { kind: 'user.pin', external_user_id: externalUserId, pin: sealed };
    this.client.publish(syncTopics(this.options.prefix, tenantId).submit(deviceId), JSON.stringify(this.#signed('submission', { device_id: deviceId, change_id: changeId, body })), { qos: 1 });
    const ack = await answered;
    if (!ack) return { status: 'unreachable' };
    if (ack.status !== 'sequenced' || ack.seq === null) return { status: 'refused', reason: ack.reason ?? ack.status };
    // the next PIN typed here must find it: wait for the log to bring it
    this.fetch(true);
    while (this.cursor < ack.seq && Date.now() < until) await new Promise((r) => setTimeout(r, 25));
    return this.cursor >= ack.seq ? { status: 'sequenced' } : { status: 'unreachable' };
  }

  /** Changes made here and not yet acknowledged by the hub. */
  pending(): number {
    return (this.store.db.prepare('SELECT COUNT(*) AS n FROM sync_outbox').get() as { n: number }).n;
  }

  /**
   * Asks the hub for what follows the cursor: one fetch in flight at a time, unless `now` (the hub
   * has just shown its head: an earlier fetch may have gone to a hub that was down).
   */
  fetch(now = false): void {
    if ((this.#fetching && !now) || !this.client.connected) return;
    // a snapshot being loaded goes on where it was (also after a crash): the log waits for it
    const snapshot = this.replica.snapshot(this.options.tenantId);
    if (this.#committing) return;
    if (snapshot?.complete) return void this.#commitSnapshot();
    // answers are arriving: the request in flight is alive (a head must not start a second stream;
    // two hundred doors catching up at once would each ask again at every head)
    if (this.#fetching && Date.now() - this.#lastAnswerAt < FETCH_TIMEOUT_MS) return;
    this.#fetching = true;
    // a reply lost on the way must not stop fetching for good
    setTimeout(() => (this.#fetching = false), FETCH_TIMEOUT_MS).unref();
    const topics = syncTopics(this.options.prefix, this.options.tenantId);
    const { deviceId } = this.options;
    // a new id for each request: an answer to an earlier one (late, or replayed) is not applied
    const request_id = crypto.randomUUID();
    if (snapshot) {
      this.#request = { id: request_id, kind: 'snapshot' };
      const request = { device_id: deviceId, after: snapshot.afterUser, limit: MAX_USERS_PER_CHUNK, chunks: MAX_CHUNKS_PER_REQUEST, models: this.#takes(), pins: true, request_id };
      this.client.publish(topics.snapshot(deviceId), JSON.stringify(this.#signRequest('snapshot', request)), { qos: 1 });
      return;
    }
    this.#request = { id: request_id, kind: 'fetch' };
    // the change at the cursor is named: the hub says when its log holds another there (rewound)
    const { seq: after, changeId } = this.replica.position(this.options.tenantId);
    const request = { device_id: deviceId, after, ...(changeId ? { after_change_id: changeId } : {}), limit: MAX_CHANGES_PER_BATCH, batches: MAX_CHUNKS_PER_REQUEST, models: this.#takes(), pins: true, request_id };
    this.client.publish(topics.fetch(deviceId), JSON.stringify(this.#signRequest('fetch', request)), { qos: 1 });
  }

  /**
   * Sends the changes waiting in the outbox, oldest first, at most OUTBOX_WINDOW unacknowledged at
   * a time; one sent and not acknowledged within FETCH_TIMEOUT_MS goes again (the hub sequences a
   * change_id once). An upsert is sealed now, from the template held now; one that a later change
   * of the same person has overtaken is dropped, as that later change carries it.
   */
  flush(): void {
    if (!this.client.connected) return;
    const { tenantId, model, deviceId } = this.options;
    const { key, keyVersion } = this.options.keyring.latest;
    const topics = syncTopics(this.options.prefix, tenantId);
    const now = Date.now();
    const rows = this.store.db
      .prepare('SELECT change_id, external_user_id, kind, version, lost FROM sync_outbox WHERE tenant_id = ? ORDER BY rowid LIMIT ?')
      .all(tenantId, OUTBOX_WINDOW * 2) as { change_id: string; external_user_id: string; kind: LocalUserChange['kind']; version: number; lost: number }[];
    let inFlight = [...this.#sentAt.values()].filter((at) => now - at < FETCH_TIMEOUT_MS).length;
    for (const r of rows) {
      if (inFlight >= OUTBOX_WINDOW) break;
      const sentAt = this.#sentAt.get(r.change_id);
      if (sentAt !== undefined && now - sentAt < FETCH_TIMEOUT_MS) continue;
      let body: SubmittedChange | undefined;
      if (r.kind === 'delete') {
        body = { kind: 'user.delete', external_user_id: r.external_user_id, version: r.version };
      } else {
        const user = this.store.users.get(tenantId, r.external_user_id);
        const held = user && user.version === r.version ? this.store.users.enrolmentTemplates(user) : {};
        const embedding = held[model];
        const person = { externalUserId: r.external_user_id, version: r.version };
        const templates = this.#sealFurther(held, person);
        if (r.kind === 'templates' && templates.length > 0) body = { kind: 'user.templates', external_user_id: r.external_user_id, version: r.version, templates };
        else if (r.kind === 'upsert' && embedding) {
          const template = sealTemplate(key, embedding, { tenantId, ...person, model, keyVersion });
          body = { kind: 'user.upsert', external_user_id: r.external_user_id, version: r.version, model, key_version: keyVersion, template, ...(templates.length > 0 ? { templates } : {}) };
        }
      }
      if (!body) {
        this.store.db.prepare('DELETE FROM sync_outbox WHERE change_id = ?').run(r.change_id);
        continue;
      }
      this.#sentAt.set(r.change_id, now);
      inFlight++;
      const lost = r.lost === 1 ? { lost_deletion: true as const } : {};
      this.client.publish(topics.submit(deviceId), JSON.stringify(this.#signed('submission', { device_id: deviceId, change_id: r.change_id, body, ...lost })), { qos: 1 });
    }
  }

  /** The person's templates of the further models, sealed for the fleet at `version`. */
  #sealFurther(held: Embeddings, person: { externalUserId: string; version: number }): ModelTemplate[] {
    const { key, keyVersion } = this.options.keyring.latest;
    return this.#furtherModels.flatMap((model) => {
      const embedding = held[model];
      return embedding ? [{ model, key_version: keyVersion, template: sealTemplate(key, embedding, { tenantId: this.options.tenantId, ...person, model, keyVersion }) }] : [];
    });
  }

  /** What a fetch or snapshot request asks for: every model kept here (the fleet's first). */
  #takes(): string[] {
    return [this.options.model, ...this.#furtherModels];
  }

  /** One flush for a burst of local changes (an import of a thousand people is one burst). */
  #flushSoon(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(() => {
      this.#flushScheduled = false;
      this.flush();
    });
  }

  /**
   * Sends the door events the hub has not acknowledged, oldest first (the audit log is the
   * outbox: an event is marked forwarded only on the hub's ack, and the hub keeps an event id
   * once, so each arrives exactly once). One older than DELAYED_AFTER_MS by this device's own
   * clock waited for the link, and says so.
   */
  flushEvents(now = false): void {
    if ((this.#eventsInFlight && !now) || !this.client.connected) return;
    const events = unforwardedDoorEvents(this.store.db, this.options.tenantId, MAX_EVENTS_PER_BATCH);
    if (events.length === 0) return;
    this.#eventsInFlight = true;
    setTimeout(() => (this.#eventsInFlight = false), FETCH_TIMEOUT_MS).unref();
    const sentAt = Date.now();
    const batch = this.#signed('events', {
      device_id: this.options.deviceId,
      events: events.map((e) => ({
        event_id: e.id,
        door_id: e.doorId,
        type: e.type,
        result: e.result,
        reason: e.reason,
        external_user_id: e.externalUserId,
        score: e.score,
        factor: e.factor,
        time: e.createdAt,
        delayed: sentAt - Date.parse(e.createdAt) > DELAYED_AFTER_MS,
      })),
    } satisfies Omit<DoorEvents, 'auth'>);
    this.client.publish(syncTopics(this.options.prefix, this.options.tenantId).events(this.options.deviceId), JSON.stringify(batch), { qos: 1 });
  }

  /**
   * Resolves once this device has applied everything the hub had when the device (re)connected,
   * so a person deleted while the door was offline is gone before its first decision. A door that
   * cannot reach the broker does not wait (it works on its own copy); one that is connected waits
   * at most `ms`, then decides anyway (false).
   */
  whenCaughtUp(ms: number): Promise<boolean> {
    if (this.#caughtUp || !this.client.connected) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      timer.unref();
      this.#waiting.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  #stateTimer: NodeJS.Timeout | undefined;

  /** One state message for a burst of changes (the digest reads every user). */
  #stateSoon(): void {
    if (this.#stateTimer) return;
    this.#stateTimer = setTimeout(() => {
      this.#stateTimer = undefined;
      this.publishState();
    }, STATE_DELAY_MS);
    this.#stateTimer.unref();
  }

  #markCaughtUp(): void {
    this.#caughtUp = true;
    for (const wake of this.#waiting.splice(0)) wake();
  }

  async close(): Promise<void> {
    this.#markCaughtUp(); // nobody waits on a closed link
    clearTimeout(this.#stateTimer);
    this.store.users.changeJournal = null;
    for (const off of this.#off.splice(0)) off();
    // a clean stop says offline itself (the broker sends the last will only when a link breaks),
    // but does not wait for ever: a link the broker has just cut (a revocation removes the
    // device's client) never acknowledges it, and ending then would wait for that too
    let said = !this.client.connected;
    if (!said) {
      const offline = offlineState(this.options, this.#signingKey, this.#boot);
      const published = this.client.publishAsync(syncTopics(this.options.prefix, this.options.tenantId).state(this.options.deviceId), JSON.stringify(offline), { qos: 1, retain: true });
      said = await Promise.race([published.then(() => true, () => false), new Promise<boolean>((r) => setTimeout(() => r(false), CLOSE_WAIT_MS).unref())]);
    }
    await this.client.endAsync(!said);
  }

  /**
   * A message of this device with its MAC under the tenant key (it holds the tenant's current key),
   * then signed with this device's own key (it is this device's).
   */
  #signed<T extends object>(purpose: MessagePurpose & SignedPurpose, message: T): T & { auth: MessageAuth; sig: string } {
    return this.#sign(purpose, authenticate(this.options.keyring.latest, purpose, this.options.tenantId, { ...message, sent: this.#nextSent() }));
  }

  /** A request signed with this device's key, marked with when it was sent (the hub refuses a replay of it). */
  #signRequest<T extends object>(purpose: 'fetch' | 'snapshot', message: T): T & { sig: string } {
    return this.#sign(purpose, { ...message, sent: this.#nextSent() });
  }

  #sign<T extends object>(purpose: SignedPurpose, message: T): T & { sig: string } {
    return signMessage(this.#signingKey.privateKey, purpose, this.options.tenantId, message);
  }

  #nextSent(): SentMark {
    return { boot: this.#boot, n: ++this.#sentCount };
  }

  /** Whether a message from the hub carries the hub's signature (`raw`: as received). */
  #fromHub(purpose: SignedPurpose, raw: object): boolean {
    return (raw as { from?: unknown }).from === 'hub' && isSignedBy(this.options.hubKey, purpose, this.options.tenantId, raw);
  }

  #message(topic: string, payload: Buffer): void {
    const { tenantId, deviceId, logger } = this.options;
    const topics = syncTopics(this.options.prefix, tenantId);
    if (topic === topics.notice(deviceId)) {
      if (payload.length > 0) this.#notice(payload, 'broker');
    } else if (topic === topics.signedLog) {
      const msg = parseMessage(changeBatchSchema, payload);
      if (!msg.ok) return logger.warn({ problem: msg.problem }, 'sync: a log message was refused');
      if (!this.#fromHub('log', msg.raw)) return logger.warn({}, "sync: a log message not signed by the hub's key was refused (forged or altered)");
      this.#seen(msg.value.changes.at(-1)!.seq);
      // while a snapshot loads, the log after it is fetched once it is done; a deletion is applied at once
      if (this.replica.snapshot(tenantId)) return void this.replica.eraseDuringSnapshot(tenantId, msg.value.changes);
      // a log of another epoch is applied only once the hub has checked this device's place in it
      if (!this.#sameEpoch(msg.value.epoch)) return;
      // the signed log carries each person's further templates (the unsigned one does not)
      this.#apply(msg.value.changes);
    } else if (topic === topics.signedHead) {
      const msg = parseMessage(headSchema, payload);
      if (msg.ok && !this.#fromHub('head', msg.raw)) return logger.warn({}, "sync: a head not signed by the hub's key was refused (forged or altered)");
      if (msg.ok) this.#seen(msg.value.seq);
      // a head of another epoch: this device's place is checked first (#sameEpoch fetches)
      if (msg.ok && this.#sameEpoch(msg.value.epoch) && msg.value.seq > this.cursor) this.fetch(true);
      // a head below what this door applied: the hub's log was rewound (its database failed over
      // and lost the last changes); the hub answers the fetch with a snapshot to load
      if (msg.ok && !this.#reconciling && msg.value.seq < this.cursor && !this.replica.snapshot(this.options.tenantId)) {
        // (usually a head that was overtaken on its way; the hub's answer says whether it was rewound)
        logger.debug({ cursor: this.cursor, head: msg.value.seq }, "sync: a head below what this door applied; asking the hub");
        this.fetch(true);
      }
      // the hub announces its head when it (re)starts and every few seconds: a sign of life, so
      // what waits in the outbox goes now
      // the hub is alive: what waits, or went unacknowledged for FETCH_TIMEOUT_MS, goes now
      if (msg.ok && this.pending() > 0) this.flush();
      if (msg.ok) this.flushEvents(true);
    } else if (topic === topics.reply(deviceId)) {
      const msg = parseMessage(replySchema, payload);
      if (!msg.ok) return logger.warn({ problem: msg.problem }, 'sync: a reply was refused');
      const reply = msg.value;
      // a reply comes from the hub only, for this device: one a broker client or another door made
      // (or the hub's to another device) is dropped
      if (!this.#fromHub(reply.type === 'repair' ? 'repair' : 'reply', msg.raw) || reply.device_id !== deviceId) {
        return logger.warn({ type: reply.type }, "sync: a reply not signed by the hub's key for this device was refused (forged, altered, or another device's)");
      }
      if ('auth' in reply && !isAuthentic(this.replica.replyKey(tenantId), 'reply', tenantId, reply)) {
        return logger.warn({ type: reply.type }, "sync: a reply not authenticated by the tenant's current key was refused");
      }
      if (reply.type === 'repair') {
        // the hub judged the people held here when their digest was this: if it still is, reload them
        if (reply.digest !== this.store.users.digest(tenantId).digest || this.replica.snapshot(tenantId)) return;
        logger.warn({ cursor: this.cursor, head: reply.head }, "sync: the hub found this device's people differ from its own; loading a snapshot");
        this.#rewound(reply.head);
        this.replica.beginSnapshot(tenantId);
        this.fetch(true);
        return;
      }
      // a range or a chunk answers a request: only the one in flight
      if ((reply.type === 'range' || reply.type === 'snapshot') && reply.request_id !== this.#request?.id) {
        return logger.debug({ type: reply.type }, 'sync: an answer to an earlier request was ignored');
      }
      if (reply.type === 'events_ack') {
        markForwarded(this.store.db, reply.event_ids);
        this.#eventsInFlight = false;
        this.flushEvents();
        return;
      }
      if (reply.type === 'ack') {
        if (this.#awaitingHub.settle(reply.change_id, reply)) return;
        this.store.db.prepare('DELETE FROM sync_outbox WHERE change_id = ?').run(reply.change_id);
        this.#sentAt.delete(reply.change_id);
        this.#flushSoon();
        if (reply.status === 'conflict') logger.warn({ reason: reply.reason }, 'sync: the hub refused a change made here as a conflict (an admin decides)');
        return;
      }
      if (reply.type === 'snapshot') {
        // a snapshot never takes the device back behind what it has applied
        if (reply.seq < this.cursor && (this.#rewoundHead === null || reply.seq < this.#rewoundHead)) return logger.warn({ seq: reply.seq, cursor: this.cursor }, 'sync: a snapshot older than this device\'s cursor was refused');
        // chunks of two epochs are not one snapshot (the hub failed over while this device loaded it)
        const loading = this.replica.snapshot(tenantId);
        if (reply.epoch && loading?.epoch && reply.epoch !== loading.epoch) {
          logger.warn({ epoch: reply.epoch, loading: loading.epoch }, "sync: the hub's log changed epoch while a snapshot loaded; it is loaded again");
          this.replica.restartSnapshot(tenantId);
          this.#fetching = false;
          return this.fetch(true);
        }
        const chunk = this.replica.stageSnapshotChunk(tenantId, reply);
        if (chunk.ignored) return;
        this.#lastAnswerAt = Date.now();
        if (chunk.complete) return void this.#commitSnapshot();
        // the next request goes when the last chunk of this one is in
        if (reply.more) return;
        this.#fetching = false;
        this.fetch();
        return;
      }
      this.#fetching = false;
      if (reply.rewound) return this.#reconcile(reply);
      if (reply.snapshot) {
        logger.info({ cursor: this.cursor, head: reply.head }, "sync: loading a snapshot of the tenant (a new device, behind the retained log, or ahead of a rewound log)");
        this.#rewound(reply.head);
        this.replica.beginSnapshot(tenantId);
        this.fetch();
        return;
      }
      if (this.replica.snapshot(tenantId)) return; // a range asked for before the snapshot began
      // the hub answered a fetch that named this device's place (after, after_change_id) in its log: that place is in this epoch too
      if (!this.#settleEpoch(reply.epoch)) return;
      this.#apply(reply.changes);
      if (reply.more) {
        this.#fetching = true; // the rest of this fetch is on its way
        this.#lastAnswerAt = Date.now();
        return;
      }
      // the log may have gone on while this fetch was answered (its messages then found a gap, and
      // its heads a fetch in flight): ask again up to what the hub has shown since
      if (Math.max(reply.head, this.#seenSeq) > this.cursor) this.fetch();
      else this.#markCaughtUp();
    }
  }

  /**
   * A notice of the hub about this device (sync/notice.ts), from its retained notice topic or the
   * hub's HTTP endpoint. It must be for this tenant and device and signed with the hub's command
   * key; anything else is refused and logged. New key versions are added to the keyring (and its
   * file); a revocation of this device's own key pair erases its templates and keys.
   */
  #notice(payload: Buffer, from: 'broker' | 'hub'): void {
    const { tenantId, deviceId, logger, hubKey, keyring } = this.options;
    const msg = parseMessage(fleetNoticeSchema, payload);
    if (!msg.ok) return logger.warn({ from, problem: msg.problem }, 'sync: a notice was refused');
    const notice = msg.value;
    if (notice.tenant_id !== tenantId || notice.device_id !== deviceId) return logger.warn({ from }, 'sync: a notice for another device was refused');
    if (!isSignedNotice(hubKey, notice)) return logger.warn({ from, kind: notice.kind }, "sync: a notice not signed by the hub's command key was refused");
    const own = loadDeviceKey(this.store.dataDir);
    if (notice.kind === 'revoked') {
      if (notice.public_key !== own.publicKey) return logger.warn({ from }, "sync: a revocation of another key pair under this device's name was ignored");
      if (this.#revoked) return;
      this.#revoked = true;
      const wiped = wipeRevokedDevice(this.store, this.#index, { tenant_id: tenantId, device_id: deviceId, revoked_at: notice.revoked_at }, [
        ...(this.options.keyFile ? [this.options.keyFile] : []),
        ...(this.options.secretFiles ?? []),
      ]);
      logger.error({ from, erased: wiped.erased, revoked_at: notice.revoked_at }, 'sync: the hub revoked this device: its templates and keys are erased, it no longer syncs, and it serves no one');
      this.#events?.emit('device.revoked', { deviceId, revokedAt: wiped.revoked_at, wipedAt: wiped.wiped_at });
      void this.close();
      return;
    }
    const fresh = notice.keys.filter((k) => !keyring.has(k.keyVersion));
    if (fresh.length === 0) return;
    let versions;
    try {
      versions = unwrapKeys(fresh, own.privateKeyPem, { tenantId, deviceId });
    } catch (err) {
      return logger.warn({ from, problem: (err as Error).message }, 'sync: a key notice does not open with this device\'s key pair');
    }
    keyring.add(versions);
    if (this.options.keyFile) {
      const kept = fs.existsSync(this.options.keyFile) ? readKeyFile(this.options.keyFile) : [];
      writeKeyFile(this.options.keyFile, [...kept.filter((k) => !fresh.some((f) => f.keyVersion === k.keyVersion)), ...fresh].sort((a, b) => a.keyVersion - b.keyVersion));
    }
    logger.info({ from, key_versions: keyring.versions() }, 'sync: the hub rotated the tenant key; this device holds the new version');
    // what waited on the new version goes now
    this.#sentAt.clear();
    this.publishState();
    this.fetch(true);
    this.flush();
    this.flushEvents(true);
  }

  /**
   * Asks the hub (sync.hub_url) for this device's notice: when the broker turns the device away
   * (the hub removes a revoked device's client), or a change comes under a key version it does
   * not hold. At most once per ASK_HUB_INTERVAL_MS.
   */
  async askHub(): Promise<void> {
    const { logger } = this.options;
    if (!this.#hub || this.#revoked || Date.now() - this.#askedHubAt < ASK_HUB_INTERVAL_MS) return;
    this.#askedHubAt = Date.now();
    try {
      const answer = await this.#hub.notice();
      if ('status' in answer) return logger.warn({ status: answer.status }, 'sync: the hub has no notice for this device');
      this.#notice(Buffer.from(JSON.stringify(answer.notice)), 'hub');
    } catch (err) {
      logger.warn({ problem: (err as Error).message }, 'sync: cannot ask the hub for this device\'s notice');
    }
  }

  /**
   * Makes sure the hub holds this device's signing key (sync/signing-registration.ts): a device that
   * joined with an earlier release registered none, and is heard on the tenant key alone until it
   * does. Asked of the hub (sync.hub_url) once; a device that joined with this release is told its
   * key is the one registered. At most once per ASK_HUB_INTERVAL_MS while it fails.
   */
  async registerSigningKey(): Promise<void> {
    const { logger } = this.options;
    const key = this.#signingKey.publicKey;
    const registered = this.store.db.prepare(`SELECT value FROM meta WHERE key = 'sync_signing_key_registered'`).get() as { value: string } | undefined;
    if (!this.#hub || this.#revoked || registered?.value === key || Date.now() - this.#registeredAt < ASK_HUB_INTERVAL_MS) return;
    this.#registeredAt = Date.now();
    try {
      const answer = await this.#hub.registerSigningKey(loadDeviceKey(this.store.dataDir).privateKeyPem);
      if (!answer.registered) return logger.error({ status: answer.status }, 'sync: the hub refused this device\'s signing key (it holds another for this name, or the device was revoked): join the hub again');
      this.store.db.prepare(`INSERT INTO meta (key, value) VALUES ('sync_signing_key_registered', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(key);
      logger.info({}, "sync: the hub holds this device's signing key");
    } catch (err) {
      logger.warn({ problem: (err as Error).message }, "sync: cannot register this device's signing key with the hub");
    }
  }

  #seen(seq: number): void {
    if (seq > this.#seenSeq) this.#seenSeq = seq;
  }

  /**
   * Makes a snapshot whose every chunk is in this device's copy (Replica.commitSnapshot), then
   * follows the log from it. One that cannot be made (a template does not open) starts again.
   */
  async #commitSnapshot(): Promise<void> {
    const { tenantId, logger } = this.options;
    if (this.#committing) return;
    this.#committing = true;
    try {
      const { applied, removed, lostDeletions } = await this.replica.commitSnapshot(tenantId, { rewound: this.#rewoundHead !== null });
      this.#rewoundHead = null;
      this.#reconciling = false;
      this.#newEpoch = null;
      logger.info({ seq: this.cursor, applied, removed }, 'sync: snapshot loaded; the log follows from its sequence');
      if (lostDeletions > 0) {
        logger.error({ people: lostDeletions }, "sync: the hub's snapshot holds people this device had deleted (its log lost the deletions in a failover): they stay erased here, and the deletions are sent to the hub again");
        this.flush();
      }
      this.#snapshotChecked(this.replica.checkSnapshot(tenantId));
    } catch (err) {
      logger.error({ problem: (err as Error).message }, 'sync: a snapshot could not be made this device\'s copy; it is loaded again');
      this.replica.restartSnapshot(tenantId);
    } finally {
      this.#committing = false;
      this.#fetching = false;
    }
    // the state (its digest reads every user) is reported once the snapshot is complete
    this.#stateSoon();
    this.fetch();
  }

  /** The hub's signed answer had this device load a snapshot at `head`: below its cursor, the log was rewound. */
  #rewound(head: number): void {
    if (head >= this.cursor) return;
    this.options.logger.warn({ cursor: this.cursor, head }, "sync: the hub's log was rewound below what this device applied (a database failover lost its last changes); loading its snapshot");
    this.#rewoundHead = head;
    // what this door made and the hub may have lost goes again (the hub sequences a change_id once)
    this.#sentAt.clear();
  }

  /**
   * Whether a message of the hub's log (a head, a batch) is of the epoch this device follows, and
   * nothing is being reconciled. A new epoch (the hub's database failed over) or a log that holds
   * another change at this device's place: nothing more is applied, and the next fetch names this
   * device's place so the hub can check it (#settleEpoch, #reconcile).
   */
  #sameEpoch(epoch: string | undefined): boolean {
    const held = this.replica.position(this.options.tenantId).epoch;
    if (epoch === undefined || epoch === held) return !this.#reconciling;
    this.#newEpoch = epoch;
    if (!this.#reconciling) {
      const log = held === null ? 'debug' : 'warn';
      this.options.logger[log]({ epoch, held, cursor: this.cursor }, "sync: the hub's log is in a new epoch (its database failed over); this device checks its place in it before it applies anything more");
      this.#reconcile();
    } else {
      // asked again until the hub answers (a fetch in flight when the database failed may never
      // be), one fetch at a time: a stream of the new epoch's messages must not replace each
      // request before its answer comes
      this.fetch();
    }
    return false;
  }

  /**
   * The hub's answer to a fetch that named this device's place. No answer yet: the fetch goes now.
   * `rewound`: the hub's log no longer holds that place (a failover lost the changes after some
   * point): a device holding the hub's people at its head takes that head; any other loads the
   * hub's snapshot, even one older than its cursor. Either way, what this device made and the hub
   * did not acknowledge is sent again.
   */
  #reconcile(answer?: Extract<SyncReply, { type: 'range' }>): void {
    const { tenantId, logger } = this.options;
    this.#reconciling = true;
    if (!answer) {
      // a new request, whatever is in flight: what answers an earlier one was read before (and a
      // fetch the hub took as its database failed is never answered)
      this.#fetching = false;
      return this.fetch(true);
    }
    this.#sentAt.clear();
    if (answer.digest === this.store.users.digest(tenantId).digest && this.pending() === 0) {
      logger.warn({ cursor: this.cursor, head: answer.head }, "sync: the hub's log was rewound below this device's place, but this device holds the hub's people at its head: it goes on from there");
      this.replica.takeHead(tenantId, answer.head, answer.head_change_id ?? null, answer.epoch ?? null);
      this.#reconciling = false;
      this.#newEpoch = null;
      this.#stateSoon();
    } else {
      this.#rewound(answer.head);
      this.replica.beginSnapshot(tenantId);
    }
    this.fetch();
    this.flush();
  }

  /**
   * A range answered a fetch that named this device's place: the hub's log holds it, so this
   * device follows the log's epoch. False for an answer read before the epoch being reconciled
   * began (late): it is not applied.
   */
  #settleEpoch(epoch: string | undefined): boolean {
    const { tenantId } = this.options;
    if (this.#newEpoch !== null && epoch !== this.#newEpoch) return false;
    const held = this.replica.position(tenantId).epoch;
    if (epoch !== undefined && held !== epoch) {
      this.replica.adoptEpoch(tenantId, epoch);
      if (held !== null) {
        this.options.logger.info({ epoch, cursor: this.cursor }, "sync: the hub's log in its new epoch holds this device's place; it follows the log from there");
        // what was sent to the database that failed may never have been taken: it goes again now
        this.#sentAt.clear();
        this.flush();
      }
    }
    this.#reconciling = false;
    this.#newEpoch = null;
    return true;
  }

  /** The log reached the head a snapshot announced: a copy that is not the hub's there is loaded again. */
  #snapshotChecked(verdict: ApplyResult['snapshot']): void {
    if (verdict !== 'differs') return;
    this.options.logger.error({ seq: this.cursor }, "sync: at the head the snapshot announced, this device's people are not the hub's (its digest differs); loading the snapshot again");
    this.replica.beginSnapshot(this.options.tenantId);
    this.fetch(true);
  }

  #apply(changes: Parameters<Replica['apply']>[1]): void {
    const result = this.replica.apply(this.options.tenantId, changes);
    if (result.forked) {
      this.options.logger.warn({ cursor: this.cursor }, "sync: the hub's log holds another change at this device's place (rewound by a failover); this device checks its place before it applies anything more");
      return this.#reconcile();
    }
    this.#snapshotChecked(result.snapshot);
    if (result.snapshot === 'differs') return;
    if (result.applied > 0) this.#stateSoon();
    if (result.refused) this.options.logger.warn({ seq: result.refused.seq, reason: result.refused.reason }, 'sync: a change was refused and not applied');
    if (result.refused?.reason === 'unknown_key') void this.askHub();
    else if (result.gap) this.fetch();
  }
}

/** The retained state a device leaves behind when it goes (its last will, or said on a clean stop). */
function offlineState(options: DeviceSyncOptions, signingKey: DeviceSigningKey, boot: number): DeviceState {
  // signed when the device connects, sent by the broker later than what it signs after: n is 0
  const state = { device_id: options.deviceId, tenant_id: options.tenantId, state: 'offline' as const, sent: { boot, n: 0 } };
  return signMessage(signingKey.privateKey, 'state', options.tenantId, authenticate(options.keyring.latest, 'state', options.tenantId, state));
}
