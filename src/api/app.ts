import Koa from 'koa';
import Router from '@koa/router';
import type { CaptureService } from '../capture/service.ts';
import type { Logger } from '../core/logger.ts';
import { ServiceError } from '../errors.ts';
import type { Metrics } from '../core/metrics.ts';
import type { SessionService } from '../sessions/service.ts';
import type { TenantAccess } from '../store/biometry-store.ts';
import type { UserService } from '../users/service.ts';
import { errorHandler } from './http.ts';
import { metricsAccess } from './local.ts';
import { openApiDocument } from './openapi.ts';
import { biometryRoutes } from './routes/biometry.ts';
import { captureRoutes } from './routes/capture.ts';
import { type DeviceDeps, kioskRoutes } from './routes/kiosk.ts';
import { capturePageRoutes } from './routes/page.ts';
import { pinRoutes } from './routes/pins.ts';

export interface AppDeps {
  logger: Logger;
  metrics: Metrics;
  tenants: TenantAccess;
  sessions: SessionService;
  users: UserService;
  capture: CaptureService;
  maxImageBytes: number;
  /** Bearer token for /metrics; without it /metrics answers this machine only. */
  metricsToken: string | undefined;
  version: string;
  isReady: () => boolean;
  /** Door control and the kiosk, when this service runs as a device. */
  device: DeviceDeps | null;
  /** The hub's fleet endpoints (devices joining), when this service is the hub. */
  fleet?: Router;
  /** The admin console (/console), at the hub or on a standalone device. */
  console?: Router;
}

/** The HTTP application: small middlewares in a row, one error layer, one router per concern. */
export function createApp(deps: AppDeps): Koa {
  const app = new Koa({ proxy: false });
  app.silent = true; // errors are logged by the error layer, without request data

  // request log + latency metric: method, route pattern, status and time, so a 4xx leaves a trace;
  // never the path's query (capture tokens live there), a header or a body
  app.use(async (ctx, next) => {
    const started = performance.now();
    try {
      await next();
    } finally {
      const route = (ctx as unknown as { _matchedRoute?: string })._matchedRoute ?? 'unmatched';
      const seconds = (performance.now() - started) / 1000;
      deps.metrics.httpDuration.observe({ method: ctx.method, route, status: String(ctx.status) }, seconds);
      const code = ctx.status >= 400 ? (ctx.body as { error?: { code?: string } } | undefined)?.error?.code : undefined;
      deps.logger.info({ method: ctx.method, route, status: ctx.status, ms: Math.round(seconds * 1000), ...(code ? { error: code } : {}) }, 'request');
    }
  });
  app.use(async (ctx, next) => {
    ctx.set('X-Content-Type-Options', 'nosniff');
    ctx.set('Referrer-Policy', 'no-referrer');
    ctx.set('Cache-Control', 'no-store');
    ctx.set('X-Frame-Options', 'DENY');
    ctx.set('Permissions-Policy', 'camera=(), microphone=(), geolocation=()');
    await next();
  });
  app.use(errorHandler(deps.logger));
  // a device the hub revoked serves no one from that moment (device/out-of-service.ts): every API
  // key, capture link and kiosk session is refused, and only what reports the state still answers
  app.use(async (ctx, next) => {
    const out = deps.device?.outOfService();
    if (out && !reportsState(ctx.method, ctx.path)) throw new ServiceError('forbidden', out.code, out.message);
    await next();
  });

  const ops = new Router();
  ops.get('/healthz', (ctx) => {
    ctx.body = { status: 'ok' };
  });
  // ready = the engine can analyse; the broker link is reported (a door works without MQTT)
  ops.get('/readyz', (ctx) => {
    const out = deps.device?.outOfService() ?? null;
    const ready = deps.isReady() && !out;
    ctx.status = ready ? 200 : 503;
    const mqtt = deps.device?.mqttLink();
    ctx.body = {
      status: out ? 'out_of_service' : ready ? 'ready' : 'starting',
      checks: { engine: deps.isReady() ? 'ready' : 'loading models', ...(mqtt ? { mqtt } : {}), ...(out ? { device: out.message } : {}) },
    };
  });
  ops.get('/metrics', metricsAccess(deps.metricsToken), async (ctx) => {
    ctx.type = deps.metrics.registry.contentType;
    ctx.body = await deps.metrics.registry.metrics();
  });
  const doc = openApiDocument(deps.version);
  ops.get('/openapi.json', (ctx) => {
    ctx.body = doc;
  });

  for (const router of [
    ops,
    biometryRoutes(deps),
    captureRoutes({ capture: deps.capture, maxImageBytes: deps.maxImageBytes }),
    capturePageRoutes(),
    pinRoutes(deps),
    ...(deps.device ? [kioskRoutes(deps.device)] : []),
    ...(deps.fleet ? [deps.fleet] : []),
    ...(deps.console ? [deps.console] : []),
  ]) {
    app.use(router.routes());
    app.use(router.allowedMethods({ throw: false }));
  }
  return app;
}

/** What a device out of service still answers: health, metrics, its status, the kiosk page (which says so) and the console. */
function reportsState(method: string, path: string): boolean {
  if (method === 'POST') return /^\/console\/(signin|signout)$/.test(path);
  return method === 'GET' && /^\/(healthz|readyz|metrics|openapi\.json|device\/v1\/status|kiosk|kiosk\/v1\/doors\/[^/]+(\/events)?|capture\/assets\/.+|console(\/.*)?)$/.test(path);
}
