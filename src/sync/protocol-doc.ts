import { z } from 'zod';
import { fleetNoticeSchema } from './notice.ts';
import {
  MAX_CHANGES_PER_BATCH,
  MAX_EVENTS_PER_BATCH,
  MAX_USERS_PER_CHUNK,
  MAX_CHUNK_BYTES,
  changeBatchSchema,
  deviceStateSchema,
  doorEventsSchema,
  fetchRequestSchema,
  headSchema,
  replySchema,
  snapshotRequestSchema,
  submissionSchema,
} from './protocol.ts';

/** Every message of the fleet protocol: its topic, who sends it, and its schema (the one checked on receipt). */
const MESSAGES: { topic: string; direction: string; schema: z.ZodType }[] = [
  { topic: '<prefix>/sync/<t>/signed/log', direction: 'hub → devices, QoS 1; signed by the hub (`from`, `sig`)', schema: changeBatchSchema },
  { topic: '<prefix>/sync/<t>/signed/head', direction: 'hub → devices, QoS 1, retained; signed by the hub', schema: headSchema },
  { topic: '<prefix>/sync/<t>/log', direction: 'hub → devices of an earlier release, QoS 1, unsigned (only while the tenant has one)', schema: changeBatchSchema },
  { topic: '<prefix>/sync/<t>/head', direction: 'hub → devices of an earlier release, QoS 1, retained, unsigned (likewise)', schema: headSchema },
  { topic: '<prefix>/sync/<t>/submit/<device_id>', direction: 'device → hub, QoS 1', schema: submissionSchema },
  { topic: '<prefix>/sync/<t>/fetch/<device_id>', direction: 'device → hub, QoS 1', schema: fetchRequestSchema },
  { topic: '<prefix>/sync/<t>/snapshot/<device_id>', direction: 'device → hub, QoS 1', schema: snapshotRequestSchema },
  { topic: '<prefix>/sync/<t>/events/<device_id>', direction: 'device → hub, QoS 1', schema: doorEventsSchema },
  { topic: '<prefix>/sync/<t>/state/<device_id>', direction: 'device → hub, QoS 1, retained; last will `offline`', schema: deviceStateSchema },
  { topic: '<prefix>/sync/<t>/device/<device_id>', direction: 'hub → one device, QoS 1', schema: replySchema },
  { topic: '<prefix>/sync/<t>/notice/<device_id>', direction: 'hub → one device, QoS 1, retained; signed with the command key (also `POST /fleet/v1/notice`)', schema: fleetNoticeSchema },
];

/**
 * firmware-config/sync-protocol.md: generated from the zod schemas of src/sync/protocol.ts
 * (`npm run docs:protocol`; a test fails when the file and the schemas differ).
 */
export function protocolDocument(): string {
  const parts = [
    '# Fleet sync protocol',
    '',
    '<!-- generated from src/sync/protocol.ts by `npm run docs:protocol`: do not edit -->',
    '',
    'Every payload is JSON, checked on receipt against these schemas (JSON Schema, draft 2020-12).',
    '`<prefix>` is the devices\' `mqtt.topic_prefix`, `<t>` the tenant id.',
    '',
    '## Who said it',
    '',
    'Every message names its sender and carries its Ed25519 signature `sig` (src/sync/signature.ts), over `authface-sync:<purpose>:v2`, the tenant id and the message\'s canonical JSON (keys sorted, `sig` left out):',
    '',
    '- the hub (`from: "hub"`) signs with the tenant\'s command key, which a device learned at join (its `remote_commands.public_key`): the log, the head, every reply and notice;',
    '- a device (its `device_id`) signs with the signing key it registered at join (`authface join`, or `authface hub wrap-key --signing-key`): its submissions, events, state, and its fetch and snapshot requests.',
    '',
    'Each fetch and snapshot request carries a fresh `request_id`; the replies carry it and the `device_id` that asked, and a device applies only replies to the request it has in flight, never a snapshot older than its cursor. The hub answers only devices that joined the tenant, and at most 10 requests a second each (a burst of 50). The tenant key\'s MAC (`auth`) still shows the sender holds the tenant\'s current key; it no longer says who spoke. A device of an earlier release signs nothing: the hub hears it on the MAC alone and answers it in the unsigned form.',
    '',
    '## Size limits',
    '',
    `- A log message or a fetched range: at most ${MAX_CHANGES_PER_BATCH} changes of about 1 KB (a sealed 128-float template is 704 base64 characters). The signed log carries each person's further templates and the unsigned one (for devices of an earlier release) does not; a signed log message or a range that carries them (about 2.8 KB each for a 512-float template) ends early before ${MAX_CHUNK_BYTES / 1024} KiB.`,
    `- A snapshot chunk: at most ${MAX_USERS_PER_CHUNK} users of about 900 bytes (more with groups and further templates), and the hub ends it early before ${MAX_CHUNK_BYTES / 1024} KiB: below 64 KiB.`,
    `- Door events: at most ${MAX_EVENTS_PER_BATCH} per message.`,
    '- Brokers may limit a message (`message_size_limit` in Mosquitto, `mqtt.max_packet_size` in EMQX): allow 128 KiB.',
    '',
  ];
  for (const m of MESSAGES) {
    parts.push(`## \`${m.topic}\``, '', m.direction, '', '```json', JSON.stringify(z.toJSONSchema(m.schema, { unrepresentable: 'any' }), null, 2), '```', '');
  }
  return parts.join('\n');
}
