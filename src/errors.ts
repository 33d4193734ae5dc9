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
