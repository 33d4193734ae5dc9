import { z } from 'zod';

/**
 * The request and response shapes of the HTTP API. Requests are validated with these; the
 * OpenAPI document at /openapi.json is generated from the same objects; tests check responses
 * against them. Paths, fields and shapes of /biometry/v1 follow ../shared/spec/auth-face-api.md.
 */

const clientState = z
  .uuidv4({ error: 'client_state must be a UUID v4' })
  .describe('Your identifier for this session: a UUID v4, unique within your tenant.');
const redirectUrl = z
  .string({ error: 'redirect_url must be a string' })
  .max(2048, { error: 'redirect_url is too long (2048 characters at most)' })
  .describe("Where the person's browser returns after capture; its origin must be allowed for your tenant.");
/** A UTF-16 surrogate without its pair: JSON can carry one ("\ud800"), but it is no text. */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

const externalUserId = z
  .string({ error: 'external_user_id must be a string' })
  .refine((s) => !LONE_SURROGATE.test(s), { error: 'external_user_id is not well-formed text (it holds a lone UTF-16 surrogate)', abort: true })
  .transform((s) => s.normalize('NFC'))
  .pipe(
    z
      .string()
      .min(1, { error: 'external_user_id must not be empty' })
      .max(128, { error: 'external_user_id is too long (128 characters at most)' })
      .regex(/^[^\p{Cc}]+$/u, { error: 'external_user_id must not contain control characters' })
      .regex(/^[^\p{Cf}]+$/u, { error: 'external_user_id must not contain invisible format characters (zero-width, direction marks)' })
      .refine((s) => s.trim().length > 0, { error: 'external_user_id must not be blank' }),
  )
  .describe('Your identifier of the person: 1-128 characters of well-formed text, compared in Unicode NFC form.');

export const flowRequest = z
  .strictObject({ client_state: clientState, redirect_url: redirectUrl, external_user_id: externalUserId })
  .meta({ id: 'FlowRequest', description: 'Starts an enroll, verify or update_embedding session.' });

export const identifyRequest = z
  .strictObject({ client_state: clientState, redirect_url: redirectUrl })
  .meta({ id: 'IdentifyRequest', description: 'Starts an identify (1:N) session.' });

export const resultRequest = z.strictObject({ client_state: clientState }).meta({ id: 'ResultRequest' });

export const listUsersRequest = z
  .strictObject({
    limit: z
      .int({ error: 'limit must be an integer' })
      .min(1, { error: 'limit must be at least 1' })
      .max(1000, { error: 'limit must be at most 1000' })
      .default(100)
      .describe('Users per page (default 100).'),
    offset: z
      .int({ error: 'offset must be an integer' })
      .min(0, { error: 'offset must be at least 0' })
      .max(Number.MAX_SAFE_INTEGER, { error: 'offset is too large' })
      .default(0)
      .describe('Users to skip (default 0).'),
  })
  .meta({ id: 'ListUsersRequest' });

export const userRequest = z.strictObject({ external_user_id: externalUserId }).meta({ id: 'UserRequest' });
export const setPinRequest = z
  .strictObject({ external_user_id: externalUserId, pin: z.string().max(16).describe('4 to 8 digits, not one digit repeated nor a run such as 1234') })
  .meta({ id: 'SetPinRequest' });
export const removePinRequest = userRequest;

const flow = z.enum(['enroll', 'verify', 'identify', 'update_embedding']);
const timestamp = z.string().regex(/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$/).describe('UTC, YYYY-MM-DD HH:MM:SS');

export const sessionCreated = z
  .strictObject({ success: z.literal(true), client_state: z.string(), biometry_url: z.url() })
  .meta({ id: 'SessionCreated', description: 'Send the person to biometry_url; it works once and expires.' });

export const resultOpen = z
  .strictObject({
    success: z.literal(true),
    state: z.string(),
    flow,
    status: z.enum(['pending', 'in_progress']),
    external_user_id: z.string().nullable(),
  })
  .meta({ id: 'ResultOpen', description: 'The session is not finished: poll again.' });

export const resultFinal = z
  .strictObject({
    success: z.literal(true),
    state: z.string(),
    flow,
    status: z.enum(['success', 'fail', 'expired']),
    event_id: z.string().regex(/^evt_[0-9a-f-]{36}$/),
    result: z.enum(['success', 'fail']),
    reason: z
      .string()
      .nullable()
      .describe(
        'null on success; on failure one of already_enrolled, conflict, user_not_found, reenrolment_required, below_threshold, ' +
          'not_identified, ambiguous_match, no_face, multiple_faces, poor_quality, not_enough_frames, spoof_detected, liveness_failed, cancelled, expired',
      ),
    external_user_id: z.string().nullable(),
    score: z.number().nullable().describe('Cosine similarity of the face embeddings, 5 decimals (when applicable).'),
    completed_at: timestamp,
  })
  .meta({ id: 'ResultFinal' });

const needsReenrolment = z
  .boolean()
  .describe(
    "The stored template cannot be used (it was damaged or altered, or made by another face model): the person cannot be verified or identified until you delete-user and enroll them again.",
  );

export const userSummary = z
  .strictObject({ external_user_id: z.string(), created_at: timestamp, updated_at: timestamp, needs_reenrolment: needsReenrolment })
  .meta({ id: 'UserSummary' });

export const userList = z
  .strictObject({
    success: z.literal(true),
    total: z.int(),
    limit: z.int(),
    offset: z.int(),
    users: z.array(userSummary),
  })
  .meta({ id: 'UserList' });

export const userDetails = z
  .strictObject({
    success: z.literal(true),
    user: z.strictObject({
      external_user_id: z.string(),
      created_at: timestamp,
      updated_at: timestamp,
      needs_reenrolment: needsReenrolment,
      version: z.int().describe('Increases on every change (enrolment, template update).'),
      templates: z
        .array(z.strictObject({ version: z.int(), active: z.boolean(), created_at: timestamp }))
        .describe('Template history; only the active one is used for matching. No biometric data.'),
    }),
  })
  .meta({ id: 'UserDetails' });

export const userDeleted = z
  .strictObject({ success: z.literal(true), external_user_id: z.string(), event_id: z.string() })
  .meta({ id: 'UserDeleted', description: 'Every template and its history is erased; the audit event remains.' });

export const pinChanged = z
  .strictObject({ success: z.literal(true), external_user_id: z.string(), event_id: z.string() })
  .meta({ id: 'PinChanged', description: 'The PIN of face+pin doors was set or removed; the audit event names the user, never the PIN.' });

export const errorResponse = z
  .strictObject({
    success: z.literal(false),
    error: z.strictObject({ code: z.string(), message: z.string() }),
  })
  .meta({ id: 'Error' });

const step = z.enum(['turn_left', 'turn_right', 'look_up', 'blink']);

export const challenge = z
  .strictObject({
    steps: z.array(step).describe('Head movements to make, in this order.'),
    colors: z.array(z.string().regex(/^#[0-9a-f]{6}$/)).describe('Screen colours to show one after the other, face to the camera.'),
    color_ms: z.int().describe('How long each colour stays on screen.'),
    step_ms: z.int().describe('Each movement must follow the previous one within this time.'),
  })
  .meta({
    id: 'Challenge',
    description:
      'The active-liveness challenge drawn for this session. Send frames while the person makes each movement, ' +
      'then while each colour fills the screen, tagging those frames with X-Light-Phase (the colour index).',
  });

export const captureSession = z
  .strictObject({
    success: z.literal(true),
    flow,
    status: z.enum(['pending', 'in_progress']),
    expires_at: z.iso.datetime(),
    liveness: z.strictObject({ mode: z.enum(['passive', 'active']), challenge: challenge.nullable() }),
    frames: z.strictObject({
      required: z.int().describe('Usable (accepted) frames a decision needs: complete with fewer fails the session with not_enough_frames.'),
      max: z.int().describe('Frames the session analyses in all; frames refused before analysis do not count.'),
      max_bytes: z.int(),
      types: z.array(z.string()),
    }),
  })
  .meta({ id: 'CaptureSession', description: 'The first call binds the link: the session becomes in_progress.' });

export const frameFeedback = z
  .strictObject({
    success: z.literal(true),
    accepted: z.boolean().describe('The frame is usable and counts towards the decision.'),
    face_found: z.boolean(),
    faces: z.int(),
    problems: z
      .array(z.string())
      .describe(
        'Why the frame was not accepted: no_face, multiple_faces, face_too_small, face_not_frontal, too_blurry, ' +
          'too_dark, too_bright, presentation_attack_suspected, different_face',
      ),
    progress: z.strictObject({ accepted_frames: z.int(), required_frames: z.int() }),
    liveness: z.strictObject({
      mode: z.enum(['passive', 'active']),
      steps_done: z.int(),
      steps_total: z.int(),
      current_step: step.nullable(),
      light_phases_seen: z.int(),
      light_phases_total: z.int(),
      failed: z.boolean().describe('A liveness check has failed for good: the session will fail with liveness_failed.'),
    }),
  })
  .meta({ id: 'FrameFeedback' });

export const captureFinished = z
  .strictObject({
    success: z.literal(true),
    status: z.enum(['success', 'fail', 'expired']),
    reason: z.string().nullable(),
    redirect_to: z.url().describe('redirect_url with client_state added to its query: send the browser there.'),
  })
  .meta({ id: 'CaptureFinished' });

export type FlowRequest = z.infer<typeof flowRequest>;
