/**
 * Failures the service reports to its callers. Domain code throws these with a kind; the HTTP
 * layer maps the kind to a status code, so no module below the API knows about HTTP.
 */
export type ErrorKind =
  | 'invalid_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'method_not_allowed'
  | 'conflict'
  | 'gone'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'too_many_requests'
  | 'busy'
  | 'unavailable';

export class ServiceError extends Error {
  constructor(
    readonly kind: ErrorKind,
    /** Stable machine-readable code, e.g. `client_state_in_use`. */
    readonly code: string,
    message: string,
    /** Seconds a client should wait before retrying (busy). */
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

/**
 * A problem the operator of the device must fix (configuration, key, data directory, hardware).
 * Its message says what is wrong and what to do; the CLI prints it as one line, with no stack.
 */
export class OperatorError extends Error {}

/** The database cannot take the request now (its server is down, or failing over): send it again shortly. */
export class DatabaseUnavailableError extends OperatorError {}

/** Whether an error means the database or the connection to it is gone (not that the query was wrong). */
export function isDatabaseUnavailable(err: unknown): boolean {
  if (err instanceof DatabaseUnavailableError) return true;
  const e = err as { code?: unknown; message?: unknown };
  // 57P01-03: the server shuts down or cannot take connections; 25006: it is a standby now;
  // 08xxx: connection exceptions
  if (typeof e.code === 'string' && (/^57P0[1-3]$/.test(e.code) || e.code === '25006' || e.code.startsWith('08') || ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH'].includes(e.code))) return true;
  return typeof e.message === 'string' && /Connection terminated|Client has encountered a connection error|timeout exceeded when trying to connect/i.test(e.message);
}
