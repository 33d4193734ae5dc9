import type { Context, Next } from 'koa';
import { hashSecret, secretMatches } from '../core/secrets.ts';
import { ServiceError } from '../errors.ts';
import { bearer } from './http.ts';

const LOOPBACK = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1']);
const PROXY_HEADERS = ['forwarded', 'x-forwarded-for', 'via'];

/** The connection comes from this machine. Behind a reverse proxy on the box, so does everyone's. */
export function fromLoopback(ctx: Context): boolean {
  return LOOPBACK.has(ctx.socket.remoteAddress ?? '');
}

/** The request says a proxy relayed it (Forwarded, X-Forwarded-For or Via). */
export function relayedByProxy(ctx: Context): boolean {
  return PROXY_HEADERS.some((h) => ctx.get(h) !== '');
}

/**
 * `/metrics` tells how many people are enrolled. With a token configured, only a scraper holding
 * it may read them (from anywhere); without one, only this machine, and not through a proxy.
 */
export function metricsAccess(token: string | undefined) {
  const tokenHash = token === undefined ? undefined : hashSecret(token);
  return async (ctx: Context, next: Next): Promise<void> => {
    if (tokenHash !== undefined) {
      if (!secretMatches(bearer(ctx), tokenHash)) throw new ServiceError('unauthorized', 'invalid_metrics_token', 'send the metrics token as Authorization: Bearer <token>');
    } else if (!fromLoopback(ctx) || relayedByProxy(ctx)) {
      throw new ServiceError('forbidden', 'metrics_local_only', '/metrics answers this machine only; set AUTHFACE_METRICS_TOKEN to scrape it from elsewhere');
    }
    await next();
  };
}
