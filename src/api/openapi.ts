import { z } from 'zod';
import * as s from './schemas.ts';

type Json = Record<string, unknown>;

const ref = (schema: z.ZodType) => ({ $ref: `#/components/schemas/${(z.globalRegistry.get(schema) as { id: string }).id}` });
const json = (schema: z.ZodType, description: string) => ({ description, content: { 'application/json': { schema: ref(schema) } } });
const errors = (...codes: number[]) =>
  Object.fromEntries(codes.map((c) => [String(c), json(s.errorResponse, ERROR_TEXT[c] ?? 'error')]));
const ERROR_TEXT: Record<number, string> = {
  400: 'Invalid input (malformed JSON, wrong type, bad UUID, redirect origin not allowed...)',
  401: 'Missing or invalid credentials',
  404: 'Not found',
  409: 'client_state already used in this tenant',
  410: 'The capture link has expired or was already used',
  413: 'Body too large',
  415: 'Unsupported content type or image format',
  403: 'Not from this machine (kiosk, metrics)',
  429: 'Too many frames for this session, or a frame already in flight on this link',
  503: 'The face engine is busy (see Retry-After)',
};

function post(summary: string, request: z.ZodType, response: z.ZodType | z.ZodType[], ...codes: number[]): Json {
  const responses = Array.isArray(response)
    ? { description: 'OK', content: { 'application/json': { schema: { oneOf: response.map(ref) } } } }
    : json(response, 'OK');
  return {
    post: {
      summary,
      security: [{ apiKey: [] }],
      requestBody: { required: true, content: { 'application/json': { schema: ref(request) } } },
      responses: { '200': responses, ...errors(...codes) },
    },
  };
}

/** The OpenAPI 3.1 document, generated from the same zod schemas that validate requests. */
export function openApiDocument(version: string): Json {
  // io: 'input': what a client sends (a field with a default is optional), and responses have no defaults
  const { schemas } = z.toJSONSchema(z.globalRegistry, { io: 'input', uri: (id) => `#/components/schemas/${id}` }) as { schemas: Record<string, Json> };
  for (const schema of Object.values(schemas)) delete schema.$schema;
  const flowDoc = (summary: string, req: z.ZodType) => post(summary, req, s.sessionCreated, 400, 401, 409, 413, 415);
  return {
    openapi: '3.1.0',
    info: {
      title: 'Auth Face API',
      version,
      description:
        'Session-based face enrolment, verification (1:1) and identification (1:N) with liveness checks. ' +
        'Face images are never stored: only encrypted embeddings. Errors are always `{success:false, error:{code,message}}`.',
    },
    components: {
      schemas,
      securitySchemes: {
        apiKey: { type: 'http', scheme: 'bearer', description: 'Tenant API key (authface tenant create / key create).' },
        captureToken: { type: 'http', scheme: 'bearer', description: 'The token `t` of a biometry_url.' },
      },
    },
    paths: {
      '/biometry/v1/enroll': flowDoc('Start an enrolment session (with 1:N duplicate blocking)', s.flowRequest),
      '/biometry/v1/verify': flowDoc('Start a verification session (1:1)', s.flowRequest),
      '/biometry/v1/identify': flowDoc('Start an identification session (1:N)', s.identifyRequest),
      '/biometry/v1/update_embedding': flowDoc("Start a session that updates a user's template", s.flowRequest),
      '/biometry/v1/result': post('Poll a session by client_state', s.resultRequest, [s.resultOpen, s.resultFinal], 400, 401, 404),
      '/biometry/v1/list-users': post('List enrolled users', s.listUsersRequest, s.userList, 400, 401),
      '/biometry/v1/get-user': post('Get one enrolled user', s.userRequest, s.userDetails, 400, 401, 404),
      '/biometry/v1/delete-user': post('Delete a user and every template', s.userRequest, s.userDeleted, 400, 401, 404),
      '/device/v1/set-pin': post(
        'Give an enrolled user the PIN of face+pin doors (4–8 digits, not guessable; stored as a salted scrypt hash). In a fleet it is a change of the hub\'s log: a door sets it through the hub and answers 503 hub_unavailable when the hub does not answer',
        s.setPinRequest,
        s.pinChanged,
        400,
        401,
        404,
        503,
      ),
      '/device/v1/remove-pin': post("Remove a user's PIN (in a fleet, through the hub, as set-pin)", s.removePinRequest, s.pinChanged, 400, 401, 404, 503),
      '/capture/v1/session': {
        get: { summary: 'Open the capture session (binds the link)', security: [{ captureToken: [] }], responses: { '200': json(s.captureSession, 'OK'), ...errors(401, 410) } },
      },
      '/capture/v1/frames': {
        post: {
          summary: 'Upload one frame; answers per-frame feedback',
          security: [{ captureToken: [] }],
          parameters: [
            {
              name: 'X-Light-Phase',
              in: 'header',
              required: false,
              description: 'Active liveness: the index of the challenge colour on screen when the frame was taken.',
              schema: { type: 'integer', minimum: 0, maximum: 99 },
            },
          ],
          requestBody: { required: true, content: Object.fromEntries(['image/jpeg', 'image/png', 'image/webp'].map((t) => [t, { schema: { type: 'string', contentEncoding: 'binary' } }])) },
          responses: { '200': json(s.frameFeedback, 'OK'), ...errors(400, 401, 410, 413, 415, 429, 503) },
        },
      },
      '/capture/v1/complete': {
        post: {
          summary: 'Decide over the accepted frames',
          description: 'A decision needs frames.required accepted frames; completing with fewer fails the session (not_enough_frames, or no_face / multiple_faces / poor_quality when none was usable).',
          security: [{ captureToken: [] }],
          responses: { '200': json(s.captureFinished, 'OK'), ...errors(401, 410) },
        },
      },
      '/capture/v1/cancel': {
        post: { summary: 'Give up: the session fails with reason cancelled', security: [{ captureToken: [] }], responses: { '200': json(s.captureFinished, 'OK'), ...errors(401, 410) } },
      },
      '/healthz': { get: { summary: 'Liveness of the process', responses: { '200': { description: 'OK' } } } },
      '/readyz': { get: { summary: 'Models loaded and database open', responses: { '200': { description: 'ready' }, '503': { description: 'not ready' } } } },
      '/metrics': { get: { summary: 'Prometheus metrics', responses: { '200': { description: 'text exposition format' } } } },
    },
  };
}
