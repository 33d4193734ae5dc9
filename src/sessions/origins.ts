import { ServiceError } from '../errors.ts';

const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]']);

/** https, or plain http to this machine only: where a secret (a capture token, a claim code) may go. */
export function isSecureUrl(url: URL): boolean {
  return url.protocol === 'https:' || (url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname));
}

/**
 * The origins a tenant allows redirect_url to point to: `https://host[:port]`, or plain http on
 * this machine only (`http://localhost:3000`). A loopback origin may leave its port open
 * (`http://localhost:*`) so a local app works whatever port it runs on.
 */
export function parseAllowedOrigin(text: string): string {
  const wildcard = /^(https?:\/\/(?:localhost|127\.0\.0\.1|\[::1\])):\*\/?$/.exec(text.trim());
  if (wildcard) return `${wildcard[1]}:*`;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`${text} is not an origin such as https://app.example.com`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error(`${text}: an origin is https:// (or http:// on this machine)`);
  if (url.protocol === 'http:' && !LOOPBACK_HOSTS.has(url.hostname)) {
    throw new Error(`${text} can never be used: redirect_url must use https (plain http only for localhost, 127.0.0.1 or [::1])`);
  }
  if (url.username || url.password) throw new Error(`${text}: an origin carries no credentials`);
  return url.origin;
}

function matches(allowed: string, url: URL): boolean {
  if (allowed.endsWith(':*')) return `${url.protocol}//${url.hostname}` === allowed.slice(0, -2);
  return allowed === url.origin;
}

/** https only (http for loopback), no credentials, and an origin the tenant has allowed. */
export function assertRedirectAllowed(allowedOrigins: readonly string[], redirectUrl: string): void {
  let url: URL;
  try {
    url = new URL(redirectUrl);
  } catch {
    throw new ServiceError('invalid_request', 'invalid_redirect_url', 'redirect_url must be an absolute URL');
  }
  if (!isSecureUrl(url)) {
    throw new ServiceError('invalid_request', 'insecure_redirect_url', 'redirect_url must use https (http only for localhost)');
  }
  if (url.username || url.password) {
    throw new ServiceError('invalid_request', 'invalid_redirect_url', 'redirect_url must not carry credentials');
  }
  if (!allowedOrigins.some((o) => matches(o, url))) {
    throw new ServiceError('invalid_request', 'redirect_origin_not_allowed', `the origin ${url.origin} is not allowed for this tenant (authface tenant update --allowed-origin …)`);
  }
}
