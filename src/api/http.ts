import type { Context, Next } from 'koa';
import getRawBody from 'raw-body';
import type { Logger } from 'pino';
import type { z } from 'zod';
import { ImageInputError, QueueFullError, WorkerTaskError } from '../biometrics/index.ts';
import { loggableError } from '../core/logger.ts';
import { type ErrorKind, ServiceError, isDatabaseUnavailable } from '../errors.ts';
import type { TenantAccess } from '../store/biometry-store.ts';
import type { Tenant } from '../store/tenants.ts';

export const STATUS: Record<ErrorKind, number> = {
  invalid_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  gone: 410,
  payload_too_large: 413,
  unsupported_media_type: 415,
  too_many_requests: 429,
  busy: 503,
  unavailable: 503,
};

/** The error a client sees for a failure we expect; null for anything else (a bare 500). */
export function toServiceError(err: unknown): ServiceError | null {
  if (err instanceof ServiceError) return err;
  if (isDatabaseUnavailable(err)) return new ServiceError('unavailable', 'database_unavailable', 'the database is not reachable (failing over?): send the request again in a few seconds', 2);
  if (err instanceof QueueFullError) {
    return new ServiceError('busy', 'engine_busy', 'the face engine is busy; retry shortly', err.retryAfterSeconds);
  }
  if (err instanceof WorkerTaskError && err.code === 'timeout') {
    return new ServiceError('busy', 'analysis_timeout', err.message, err.retryAfterSeconds ?? 1);
  }
  if (err instanceof ImageInputError || (err instanceof WorkerTaskError && err.code !== 'internal')) {
    const kind = err instanceof ImageInputError ? err.kind : (err.code as ImageInputError['kind']);
    const map = { unsupported_media_type: 'unsupported_media_type', image_too_large: 'payload_too_large', invalid_image: 'invalid_request' } as const;
    return new ServiceError(map[kind] ?? 'invalid_request', kind, err.message);
  }
  return null;
}

/**
 * The one error layer: every failure below becomes `{ success: false, error: { code, message } }`
 * with a fitting status. Unexpected errors are logged (without request bodies) and answered 500
 * with no detail.
 */
export function errorHandler(logger: Logger) {
  return async (ctx: Context, next: Next) => {
    try {
      await next();
      if (ctx.status === 404 && ctx.body === undefined) {
        throw new ServiceError('not_found', 'route_not_found', 'no such endpoint');
      }
      if (ctx.status === 405) {
        throw new ServiceError('method_not_allowed', 'method_not_allowed', `use ${ctx.response.get('Allow') || 'another method'} on this endpoint`);
      }
    } catch (err) {
      const e = toServiceError(err);
      if (!e) {
        logger.error({ err: loggableError(err), route: ctx.state.route }, 'request failed');
        ctx.status = 500;
        ctx.body = { success: false, error: { code: 'internal_error', message: 'the request could not be completed' } };
        return;
      }
      ctx.status = STATUS[e.kind];
      ctx.body = { success: false, error: { code: e.code, message: e.message } };
      if (e.retryAfter !== undefined) ctx.set('Retry-After', String(e.retryAfter));
      if (e.kind === 'unauthorized') ctx.set('WWW-Authenticate', 'Bearer');
    }
  };
}

const JSON_LIMIT = 64 * 1024;

/** Reads and validates a JSON body against a schema; every failure is a clear 4xx. */
export async function readJson<S extends z.ZodType>(ctx: Context, schema: S): Promise<z.output<S>> {
  if (!ctx.is('application/json')) {
    throw new ServiceError('unsupported_media_type', 'unsupported_media_type', 'send the body as application/json');
  }
  const text = await readBody(ctx, JSON_LIMIT, 'utf8');
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new ServiceError('invalid_request', 'invalid_json', 'the body is not valid JSON');
  }
  // every request body is a JSON object: say so rather than "… is required" for `[]` or `"x"`
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new ServiceError('invalid_request', 'validation_error', 'the body must be a JSON object');
  }
  const parsed = schema.safeParse(data);
  if (!parsed.success) throw new ServiceError('invalid_request', 'validation_error', validationMessage(parsed.error.issues[0], data as Record<string, unknown>));
  return parsed.data;
}

/**
 * One sentence about the first problem: a missing field is "x is required"; any other problem is
 * the schema's own message, which names the field (wrong type, too long, out of range).
 */
function validationMessage(issue: z.core.$ZodIssue, body: Record<string, unknown>): string {
  if (issue.code === 'unrecognized_keys') return `unknown field(s): ${issue.keys.join(', ')}`;
  const field = issue.path.join('.');
  if (issue.code === 'invalid_type' && issue.path.length === 1 && !(String(issue.path[0]) in body)) return `${field} is required`;
  return issue.message.includes(field) || !field ? issue.message : `${field}: ${issue.message}`;
}

/** Reads an image body (raw bytes) of at most `limit` bytes. */
export async function readImage(ctx: Context, limit: number): Promise<Uint8Array> {
  const type = ctx.request.type;
  if (!['image/jpeg', 'image/png', 'image/webp', 'application/octet-stream'].includes(type)) {
    throw new ServiceError('unsupported_media_type', 'unsupported_media_type', 'send one JPEG, PNG or WebP image as the body');
  }
  const body = await readBody(ctx, limit);
  if (body.length === 0) throw new ServiceError('invalid_request', 'empty_body', 'the request has no image');
  return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
}

export async function readBody(ctx: Context, limit: number): Promise<Buffer>;
export async function readBody(ctx: Context, limit: number, encoding: 'utf8'): Promise<string>;
export async function readBody(ctx: Context, limit: number, encoding?: 'utf8'): Promise<Buffer | string> {
  const declared = Number(ctx.get('content-length') || NaN);
  if (declared > limit) {
    ctx.req.resume(); // drain without keeping it
    throw new ServiceError('payload_too_large', 'payload_too_large', `the body exceeds ${limit} bytes`);
  }
  try {
    return encoding
      ? await getRawBody(ctx.req, { limit, encoding })
      : await getRawBody(ctx.req, { limit });
  } catch (err) {
    const type = (err as { type?: string }).type;
    if (type === 'entity.too.large') throw new ServiceError('payload_too_large', 'payload_too_large', `the body exceeds ${limit} bytes`);
    throw new ServiceError('invalid_request', 'invalid_body', 'the request body could not be read');
  }
}

/** `Authorization: Bearer <secret>`, or undefined. */
export function bearer(ctx: Context): string | undefined {
  const header = ctx.get('authorization');
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1];
}

export interface TenantState {
  tenant: Tenant;
}

/** Every integrator call: `Authorization: Bearer <api_key>` names the tenant it acts for. */
export function requireTenant(tenants: TenantAccess) {
  return async (ctx: Context, next: Next): Promise<void> => {
    const key = bearer(ctx);
    const tenant = key ? await tenants.findByApiKey(key) : undefined;
    if (!tenant) throw new ServiceError('unauthorized', 'invalid_api_key', 'send a valid API key as Authorization: Bearer <key>');
    (ctx.state as TenantState).tenant = tenant;
    await next();
  };
}
