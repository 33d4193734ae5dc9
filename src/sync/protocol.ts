import { z } from 'zod';
import { HUB_SENDER, signatureSchema } from './signature.ts';

/**
 * The replication log's messages, validated on receipt by devices and the hub alike. The hub gives
 * every change of a tenant the next sequence number of that tenant in the same PostgreSQL
 * transaction as the change (hub/store.ts); devices apply changes strictly in that order and move
 * their cursor in the same SQLite transaction as the data (sync/replica.ts).
 */

/** At most this many messages (snapshot chunks, or ranges of the log) answer one request: far below a broker's per-client queue. */
export const MAX_CHUNKS_PER_REQUEST = 16;

/** A batch carries at most this many changes (about 1 KB each), so a message stays far below 64 KiB. */
export const MAX_CHANGES_PER_BATCH = 50;

/**
 * The signed protocol's fields (sync/signature.ts). A device of this release signs every message it
 * sends with its own key and names each request; the hub signs every message it sends with the
 * tenant's command key, and binds each reply to the request and the device it answers. A device of
 * an earlier release sends and takes messages without them (the hub answers in the request's form).
 */
const signed = {
  sig: signatureSchema.optional(),
};
export const sentMarkSchema = z
  .strictObject({
    boot: z.int().min(0).describe("The device's boot (its state's `boot`)"),
    n: z.int().min(0).describe('Counts the messages the device signed in this boot (0: its last will, signed when it connected)'),
  })
  .describe('When a device sent the message: the hub takes a message of a device only if it is newer than the last it took for the same purpose (a replay is refused)');
export type SentMark = z.output<typeof sentMarkSchema>;
/** What a device of this release signs. */
const signedByDevice = {
  ...signed,
  sent: sentMarkSchema.optional(),
};
const fromHub = {
  from: z.literal(HUB_SENDER).optional().describe('The sender: the hub (its key is the tenant\'s command key, which a device learned at join)'),
  ...signed,
};
/**
 * The epoch of the hub's log: its database's system identifier and WAL timeline (hub/database.ts).
 * A failover to a standby starts a new one; a standby that lacked the last commits gives their
 * numbers to other changes, so a door that sees a new epoch checks its place in the log
 * (`after_change_id`) before it applies anything more.
 */
export const epochSchema = z
  .string()
  .regex(/^[0-9]{1,20}\.[0-9]{1,10}$/, { error: 'an epoch is <system identifier>.<timeline>' })
  .describe("The epoch of the hub's log (its database's system identifier and timeline); left out by a hub whose database does not say");
const epoch = { epoch: epochSchema.optional() };

const requestId = z.uuid().describe('Chosen by the device for each request: the replies carry it, and a device applies only replies to the requests it sent');
/** The device a reply is for: a reply sent to another device's topic is refused. */
const addressee = z.string().min(1).max(64).optional().describe('The device that asked');

const base64 = (max: number) => z.string().max(max).regex(/^[A-Za-z0-9+/]*={0,2}$/, { error: 'base64' });
const externalUserId = z.string().min(1).max(128);

export const authSchema = z
  .strictObject({
    key_version: z.int().min(1).describe('Version of the tenant key the MAC was made with'),
    mac: base64(44).length(44).describe('HMAC-SHA256 under a key derived from the tenant key, over the message without `auth` (sync/envelope.ts)'),
  })
  .describe('Made by whoever holds the tenant key (the hub, or a device of the tenant); a message whose MAC does not verify is refused and logged');

export const sealedTemplateSchema = z
  .strictObject({ nonce: base64(16).length(16), ciphertext: base64(1024) })
  .describe('AES-256-GCM under the tenant key (sync/envelope.ts); 128 float32 = 512 bytes + 16-byte tag');

/** At most this many further models' templates travel with a person's template. */
export const MAX_FURTHER_TEMPLATES = 4;

export const modelTemplateSchema = z
  .strictObject({
    model: z.string().min(1).max(100),
    key_version: z.int().min(1).describe('Version of the tenant key that sealed it'),
    template: z
      .strictObject({ nonce: base64(16).length(16), ciphertext: base64(2800) })
      .describe('AES-256-GCM under the tenant key, bound like the first template (tenant, person, version, this model, key version); 512 float32 = 2,048 bytes + 16-byte tag'),
  })
  .describe("The person's template of another model, made from the same capture as the first");

const furtherTemplates = z
  .array(modelTemplateSchema)
  .max(MAX_FURTHER_TEMPLATES)
  .refine((list) => new Set(list.map((t) => t.model)).size === list.length, { error: 'one template per model' });

export const userUpsertSchema = z
  .strictObject({
    kind: z.literal('user.upsert'),
    external_user_id: externalUserId,
    version: z.int().min(1).describe("The template's version for this user; a device keeps the highest it has applied"),
    model: z.string().min(1).max(100).describe('Embedding model that made the template; a device refuses a model it does not run'),
    key_version: z.int().min(1).describe('Version of the tenant key that sealed it'),
    template: sealedTemplateSchema,
    templates: furtherTemplates
      .optional()
      .describe(
        "The person's templates of further models at the same version (sync/fleet-model.ts). Outside the change's `auth`: each is sealed and bound to this person and version, so it can be left out but not altered. The hub leaves them out for a device of an earlier release (its request names no `models`)",
      ),
  })
  .describe('A person enrolled or their template updated (at the version a device already holds: the same capture, with templates of further models)');

/**
 * A change's fields its `auth` does not cover: the hub's commit time (for display), the further
 * templates, which their own sealing binds, and a tenant's anti-spoofing floor, which the hub's
 * signature covers; a device of an earlier release gets the change without the last two, and its
 * MAC still verifies.
 */
export const CHANGE_FIELDS_OUTSIDE_AUTH = ['committed_at', 'templates', 'pad_threshold'] as const;

export const userTemplatesSchema = z
  .strictObject({
    kind: z.literal('user.templates'),
    external_user_id: externalUserId,
    version: z.int().min(1).describe("The person's version the templates were made at: refused as `stale_version` unless it is the hub's"),
    templates: furtherTemplates.min(1),
  })
  .describe("A device's templates of further models for a person it already holds (a migration from its own capture): the hub sequences them as a `user.upsert` at the same version, with the template it has");

export const userDeleteSchema = z
  .strictObject({
    kind: z.literal('user.delete'),
    external_user_id: externalUserId,
    version: z.int().min(1).describe('The tombstone version: no upsert at or below it is accepted afterwards'),
  })
  .describe('A person deleted: every copy of the template is erased');

export const userErasedSchema = z
  .strictObject({ kind: z.literal('user.erased') })
  .describe("An earlier change of a person since deleted: the hub blanks it (template and id) when the deletion is sequenced; a device skips it");

/** At most this many groups per person; a group's name is a door policy's `allow.groups` entry. */
export const MAX_GROUPS_PER_USER = 16;
export const groupNameSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, { error: 'a group name is 1-64 letters, digits, - or _ (as a door\'s allow.groups)' });

/** At most this many allowed origins per tenant. */
export const MAX_ALLOWED_ORIGINS = 10;

export const tenantSettingsSchema = z
  .strictObject({
    kind: z.literal('tenant.settings'),
    name: z.string().min(1).max(100),
    allowed_origins: z.array(z.string().min(1).max(200)).max(MAX_ALLOWED_ORIGINS).describe('Origins the redirect_url of the tenant\'s sessions may point to'),
    liveness_mode: z.enum(['passive', 'active']).describe('Liveness of the tenant\'s API sessions'),
    pad_threshold: z
      .number()
      .min(0)
      .max(1)
      .optional()
      .describe(
        "The anti-spoofing network's floor for the tenant's sessions (left out: the device's own). Outside the change's `auth` and covered by the hub's signature of the log, the range or the chunk that carries it; the hub leaves it out for a device of an earlier release, which has no such network",
      ),
  })
  .describe("The tenant's settings, made at the hub (`authface hub tenant add|update`): they replace the earlier ones on every device");

export const userGroupsSchema = z
  .strictObject({
    kind: z.literal('user.groups'),
    external_user_id: externalUserId,
    groups: z.array(groupNameSchema).max(MAX_GROUPS_PER_USER).describe('Replaces the earlier list; empty: in no group'),
  })
  .describe("The groups a person is in, set at the hub (`authface hub group add|remove`): a door whose policy allows some groups opens for their members. A deletion blanks it like the person's templates");

export const fleetPinSchema = z
  .strictObject({
    key_version: z.int().min(1).describe('Version of the tenant key that sealed the verifier and keyed the tag'),
    tag: z.int().min(0).max(65535).describe("16 bits of an HMAC of the PIN under a key derived from that version: a door finds the few rows to check with it"),
    verifier: z
      .strictObject({ nonce: base64(16).length(16), ciphertext: base64(88).length(88) })
      .describe("The PIN's salt and scrypt hash (48 bytes), AES-256-GCM under that version, bound to tenant, person, version and tag (sync/pin-envelope.ts)"),
  })
  .describe('A PIN of face+pin doors, never in the clear');

export const userPinSchema = z
  .strictObject({
    kind: z.literal('user.pin'),
    external_user_id: externalUserId,
    pin: fleetPinSchema.nullable().describe('null: the PIN removed'),
  })
  .describe(
    "A person's PIN for face+pin doors, set or removed at the hub (`authface hub pin set|remove`, its API, its console) or at a door through the hub. A deletion blanks it like the person's templates; a device of an earlier release gets it as `user.erased`",
  );

/** What a device or the hub's API submits for sequencing. */
export const submittedChangeSchema = z.discriminatedUnion('kind', [userUpsertSchema, userDeleteSchema, userTemplatesSchema]);

/**
 * Changes made at the hub (a device's submission of one is refused by the submission's schema, but
 * for `user.pin`: a door sets a PIN through the hub, which sequences it as its own change).
 */
export const adminChangeSchema = z.discriminatedUnion('kind', [tenantSettingsSchema, userGroupsSchema, userPinSchema]);

/** What the log holds: submitted and admin changes, and the ones a later deletion blanked. */
export const changeBodySchema = z.discriminatedUnion('kind', [userUpsertSchema, userDeleteSchema, userGroupsSchema, userPinSchema, tenantSettingsSchema, userErasedSchema]);

export const changeSchema = z
  .intersection(
    changeBodySchema,
    z.object({
      tenant_id: z.uuid(),
      seq: z.int().min(1).describe("The change's place in its tenant's log: 1, 2, 3 … without gaps"),
      change_id: z.uuid().describe('Chosen by whoever made the change; the hub sequences a change_id once, so a retry is harmless'),
      origin: z.string().min(1).max(64).describe('`hub` or the device id where the change was made'),
      committed_at: z.iso.datetime().describe("The hub's commit time (for display; order is by seq only, never by clocks); the only field `auth` does not cover"),
      auth: authSchema.describe('Made by the hub when it sequenced the change (and again when a deletion blanked it)'),
    }),
  )
  .meta({ id: 'SyncChange' });

export const changeBatchSchema = z
  .strictObject({
    tenant_id: z.uuid(),
    changes: z.array(changeSchema).min(1).max(MAX_CHANGES_PER_BATCH),
    ...epoch,
    ...fromHub,
  })
  .meta({ id: 'SyncChangeBatch', description: 'Changes of one tenant in order (the hub publishes them, a device fetches a range)' });

export type ChangeBody = z.output<typeof changeBodySchema>;
export type SubmittedChange = z.output<typeof submittedChangeSchema>;
export type AdminChange = z.output<typeof adminChangeSchema>;
export type TenantSettings = z.output<typeof tenantSettingsSchema>;
export type UserUpsert = z.output<typeof userUpsertSchema>;
export type UserPin = z.output<typeof userPinSchema>;
export type ModelTemplate = z.output<typeof modelTemplateSchema>;
export type SnapshotUser = z.output<typeof snapshotUserSchema>;
export type Change = z.output<typeof changeSchema>;
export type ChangeBatch = z.output<typeof changeBatchSchema>;

/** Topics of a tenant's log on the broker (documented in firmware-config/README.md, "Fleet sync"). */
export function syncTopics(prefix: string, tenantId: string) {
  const base = `${prefix}/sync/${tenantId}`;
  return {
    /** hub → devices: new changes (a ChangeBatch), QoS 1. */
    log: `${base}/log`,
    /** hub → devices, retained: the tenant's last sequence number, so a device that missed a message sees the gap. */
    head: `${base}/head`,
    /** hub → devices: the log, each batch signed by the hub (`log` carries it unsigned for devices of an earlier release, while the tenant has any). */
    signedLog: `${base}/signed/log`,
    /** hub → devices, retained: the head, signed by the hub. */
    signedHead: `${base}/signed/head`,
    // what a device sends goes to a topic of its own, so a broker ACL can keep each device to its
    // own (firmware-config/README.md, "Broker rights"); the hub refuses a message whose device_id
    // is not the topic's
    /** device → hub: a change made at the device (Submission). */
    submit: (deviceId: string) => `${base}/submit/${deviceId}`,
    /** device → hub: "send me the changes after N" (FetchRequest). */
    fetch: (deviceId: string) => `${base}/fetch/${deviceId}`,
    /** device → hub: "send me the users after this one" (SnapshotRequest). */
    snapshot: (deviceId: string) => `${base}/snapshot/${deviceId}`,
    /** hub → one device: acks of its submissions and the ranges it fetched. */
    reply: (deviceId: string) => `${base}/device/${deviceId}`,
    /** device → hub: door events for the central store (DoorEvents), each sent until acknowledged. */
    events: (deviceId: string) => `${base}/events/${deviceId}`,
    /** device → hub, retained, with an `offline` last will: how the device is (DeviceState). */
    state: (deviceId: string) => `${base}/state/${deviceId}`,
    /** hub → one device, retained: its standing, signed with the command key (sync/notice.ts: its keys, or its revocation). */
    notice: (deviceId: string) => `${base}/notice/${deviceId}`,
  };
}

export const submissionSchema = z
  .strictObject({
    device_id: z.string().min(1).max(64),
    change_id: z.uuid(),
    body: z.discriminatedUnion('kind', [userUpsertSchema, userDeleteSchema, userTemplatesSchema, userPinSchema]).describe(
      'A change made at the device. `user.pin`: a PIN set or removed at a door while it waits (never queued): sequenced only for a person enrolled at the hub (`user_not_found`), with a verifier sealed under the current key version (`stale_key`), and a removal only of a PIN the hub holds (`pin_not_found`)',
    ),
    lost_deletion: z
      .literal(true)
      .optional()
      .describe("A `user.delete` this door had applied that the hub's log no longer holds (its database failed over without it): the door keeps the person erased and sends the deletion again; the hub sequences it and reports it to the admin (audit `deletion_lost`)"),
    fleet_check: z
      .enum(['enroll', 'update'])
      .optional()
      .describe(
        "A template the door waits on before its session succeeds. `enroll`: refused if the face is already enrolled under another id anywhere in the fleet (`duplicate_face`) or the id is (`already_enrolled`); otherwise sequenced at the next version (re-sealed for it). `update` (its `version` is the door's version + 1): refused as `duplicate_face` likewise, `user_not_found` when the person is not enrolled at the hub, `stale_version` (with the hub's `version`) when the hub's is not the door's. The ack gives the version",
      ),
    auth: authSchema,
    ...signedByDevice,
  })
  .meta({ id: 'SyncSubmission', description: 'A change made at a device, for the hub to sequence' });

const takesPins = z
  .literal(true)
  .optional()
  .describe('This device applies PINs (`user.pin`, and `pin` of snapshot users). A device of an earlier release leaves it out: it gets each `user.pin` as `user.erased` (authenticated as such) and no PINs');

export const fetchRequestSchema = z
  .strictObject({
    device_id: z.string().min(1).max(64),
    after: z.int().min(0),
    after_change_id: z
      .uuid()
      .optional()
      .describe("The change_id of the change at `after`, as this device applied it: the hub answers `rewound` when its log holds another change there, or none (the log was rewound by a failover)"),
    limit: z.int().min(1).max(MAX_CHANGES_PER_BATCH),
    batches: z.int().min(1).max(MAX_CHUNKS_PER_REQUEST).default(1).describe('Ranges of `limit` changes the hub sends in a row for this request'),
    models: z
      .array(z.string().min(1).max(100))
      .max(MAX_FURTHER_TEMPLATES + 1)
      .optional()
      .describe("The models whose templates this device takes: the answer carries the further templates of these. A device of an earlier release leaves it out and gets each person's first template only"),
    pins: takesPins,
    request_id: requestId.optional(),
    ...signedByDevice,
  })
  .meta({ id: 'SyncFetch' });

/** At most this many users in one snapshot chunk (about 900 bytes each). */
export const MAX_USERS_PER_CHUNK = 64;

/** A snapshot chunk whose users (with their groups) would pass this many bytes of JSON ends early. */
export const MAX_CHUNK_BYTES = 60 * 1024;

export const snapshotRequestSchema = z
  .strictObject({
    device_id: z.string().min(1).max(64),
    after: z.string().max(128).nullable().describe('The last external_user_id applied (byte order), or null for the first chunk'),
    limit: z.int().min(1).max(MAX_USERS_PER_CHUNK),
    chunks: z.int().min(1).max(MAX_CHUNKS_PER_REQUEST).default(1).describe('Chunks the hub sends in a row for this request, each after the one before'),
    models: z
      .array(z.string().min(1).max(100))
      .max(MAX_FURTHER_TEMPLATES + 1)
      .optional()
      .describe("The models whose templates this device takes: the answer carries the further templates of these. A device of an earlier release leaves it out and gets each person's first template only"),
    pins: takesPins,
    request_id: requestId.optional(),
    ...signedByDevice,
  })
  .meta({ id: 'SyncSnapshotRequest', description: "A chunk of the tenant's live users, in external_user_id byte order" });

export const snapshotUserSchema = userUpsertSchema.omit({ kind: true }).extend({
  groups: z.array(groupNameSchema).max(MAX_GROUPS_PER_USER).optional().describe('The groups the person is in (left out when none)'),
  pin: fleetPinSchema.optional().describe("The person's PIN (left out when none, and for a device that does not take PINs)"),
});

export const headSchema = z.strictObject({ tenant_id: z.uuid(), seq: z.int().min(0), ...epoch, ...fromHub }).meta({ id: 'SyncHead' });

/** At most this many door events in one message. */
export const MAX_EVENTS_PER_BATCH = 100;

export const doorEventsSchema = z
  .strictObject({
    device_id: z.string().min(1).max(64),
    events: z
      .array(
        z.strictObject({
          event_id: z.string().regex(/^evt_[0-9a-f-]{36}$/),
          door_id: z.string().min(1).max(64),
          type: z.string().min(1).max(32),
          result: z.string().max(16).nullable(),
          reason: z.string().max(64).nullable(),
          external_user_id: z.string().max(128).nullable(),
          score: z.number().nullable(),
          factor: z.string().max(16).nullable(),
          time: z.string().max(40).describe("The device's clock when it happened"),
          delayed: z.boolean().describe('Held at the device (its link was down) before it could be sent'),
        }),
      )
      .min(1)
      .max(MAX_EVENTS_PER_BATCH),
    auth: authSchema,
    ...signedByDevice,
  })
  .meta({ id: 'SyncDoorEvents', description: 'Access decisions, remote unlocks and alarms of a door, for the central store (kept once per event_id)' });

export type DoorEvents = z.output<typeof doorEventsSchema>;

export const replySchema = z
  .discriminatedUnion('type', [
    z.strictObject({ type: z.literal('events_ack'), event_ids: z.array(z.string()).max(MAX_EVENTS_PER_BATCH), auth: authSchema, device_id: addressee, ...fromHub }),
    z.strictObject({
      type: z.literal('ack'),
      change_id: z.uuid(),
      status: z.enum(['sequenced', 'conflict', 'refused']).describe('refused: a fleet_check did not pass, or could not open the template (nothing recorded)'),
      seq: z.int().min(1).nullable(),
      reason: z.string().nullable(),
      version: z.int().min(1).optional().describe('The version the change was sequenced at (fleet_check); refused as stale_version: the version the hub has'),
      score: z.number().optional().describe('fleet_check refused: similarity to the person already enrolled'),
      auth: authSchema,
      device_id: addressee,
      ...fromHub,
    }),
    z.strictObject({
      type: z.literal('range'),
      tenant_id: z.uuid(),
      head: z.int().min(0),
      changes: z.array(changeSchema).max(MAX_CHANGES_PER_BATCH),
      snapshot: z.boolean().optional().describe('The device is new, or the log before its cursor is compacted: load a snapshot, then the log after it'),
      more: z.boolean().optional().describe('More ranges answer the same fetch (ask again only after the last)'),
      rewound: z
        .boolean()
        .optional()
        .describe("The log holds another change at the fetch's `after`, or none (a failover lost the changes after some point): the device compares its people with `digest` at `head`, takes that head if they are the same, and loads a snapshot if not"),
      digest: z.string().regex(/^[0-9a-f]{64}$/).optional().describe("With `rewound`: the digest of the hub's people at `head`"),
      head_change_id: z.uuid().optional().describe('With `rewound`: the change_id of the change at `head`'),
      ...epoch,
      request_id: requestId.optional(),
      device_id: addressee,
      ...fromHub,
    })
      .describe('Signed by the hub and bound to the fetch it answers (to a device of an earlier release: neither, and each change is authenticated on its own)'),
    z.strictObject({
      type: z.literal('snapshot'),
      tenant_id: z.uuid(),
      seq: z.int().min(0).describe("The tenant's head when the chunk was read: the first chunk's is where the log resumes"),
      seq_change_id: z.uuid().optional().describe('With the first chunk: the change_id of the change at `seq` (left out at 0); the device names it when it fetches from there'),
      after: z.string().max(128).nullable().describe('The request this answers (a duplicate or late answer is recognised and ignored)'),
      users: z.array(snapshotUserSchema).max(MAX_USERS_PER_CHUNK),
      tenant: tenantSettingsSchema.omit({ kind: true }).optional().describe("The tenant's settings as of `seq` (with the first chunk)"),
      next: z.string().max(128).nullable().describe('Ask for the chunk after this user; null: that was the last'),
      more: z.boolean().describe('More chunks answer the same request (ask again only after the last)'),
      head: z.int().min(0).optional().describe("With the last chunk (`next` null): the hub's head when it was read. The device makes the snapshot its copy only once every chunk is in, then follows the log; at this head it must hold exactly the people of `digest`, or it loads the snapshot again"),
      digest: z.string().regex(/^[0-9a-f]{64}$/).optional().describe("With the last chunk: the digest of the hub's people at `head` (as a device state's `digest`)"),
      ...epoch,
      auth: authSchema,
      request_id: requestId.optional(),
      device_id: addressee,
      ...fromHub,
    }),
    z
      .strictObject({
        type: z.literal('repair'),
        tenant_id: z.uuid(),
        device_id: z.string().min(1).max(64),
        digest: z.string().max(64).describe('The digest the device reported, which differs from the hub\'s at the same sequence: a device whose digest is no longer this ignores the repair'),
        head: z.int().min(0),
        ...fromHub,
      })
      .describe("The hub found the device's people differ from its own at the same sequence: the device reloads a snapshot at once"),
  ])
  .meta({ id: 'SyncReply' });

export const deviceStateSchema = z
  .strictObject({
    device_id: z.string().min(1).max(64),
    tenant_id: z.uuid(),
    state: z.enum(['online', 'offline']),
    applied_seq: z.int().min(0).optional().describe('The last change of the log applied here'),
    digest: z.string().max(64).optional().describe('SHA-256 (hex) of the sorted `external_user_id:version` lines of the people this device holds (`:group,group` added for a person in groups)'),
    users: z.int().min(0).optional(),
    pending: z.int().min(0).optional().describe('Changes made here and not yet acknowledged by the hub (the digest cannot match the hub\'s until they are)'),
    model: z.string().max(100).optional(),
    version: z.string().max(32).optional().describe('Software version'),
    boot: z.int().min(0).optional().describe('Counts the starts of the sync client on this device'),
    doors: z.array(z.string().regex(/^[A-Za-z0-9_-]{1,64}$/)).max(64).optional().describe("The device's doors (the console lists them, and opens one remotely)"),
    time: z.iso.datetime().optional().describe("The device's clock (shown, never used for ordering)"),
    auth: authSchema,
    ...signedByDevice,
  })
  .meta({ id: 'SyncDeviceState', description: 'Sparkplug-style device state: retained, with a last will of `offline`' });

export type DeviceState = z.output<typeof deviceStateSchema>;
export type Submission = z.output<typeof submissionSchema>;
export type SyncReply = z.output<typeof replySchema>;

/**
 * Parses a message with a schema; the reason for anything that does not fit. `raw` is the JSON as
 * received: a signature is checked on it, never on what the schema made of it (defaults).
 */
export function parseMessage<S extends z.ZodType>(schema: S, payload: Buffer): { ok: true; value: z.output<S>; raw: object } | { ok: false; problem: string } {
  let data: unknown;
  try {
    data = JSON.parse(payload.toString('utf8'));
  } catch {
    return { ok: false, problem: 'not JSON' };
  }
  const parsed = schema.safeParse(data);
  return parsed.success ? { ok: true, value: parsed.data, raw: data as object } : { ok: false, problem: parsed.error.issues[0]?.message ?? 'invalid' };
}
