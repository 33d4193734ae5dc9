import { PassThrough } from 'node:stream';
import Router from '@koa/router';
import type { Context, Next } from 'koa';
import type { AccessController } from '../../access/controller.ts';
import type { KioskService } from '../../access/kiosk.ts';
import { KIOSK_HEADER, type KioskSecret } from '../../access/kiosk-secret.ts';
import type { EventBus } from '../../core/events.ts';
import type { DeviceConfig } from '../../device/config.ts';
import { ServiceError } from '../../errors.ts';
import type { MqttLink } from '../../mqtt/bridge.ts';
import type { OutOfService } from '../../device/out-of-service.ts';
import type { TenantStore } from '../../store/tenants.ts';
import { bearer, readJson } from '../http.ts';
import { fromLoopback, relayedByProxy } from '../local.ts';
import { z } from 'zod';
import { CAPTURE_CSP, pageHtml } from './page.ts';

export interface DeviceDeps {
  config: DeviceConfig;
  kiosk: KioskService;
  access: AccessController;
  events: EventBus;
  tenants: TenantStore;
  kioskSecret: KioskSecret;
  mqttLink: () => MqttLink;
  /** Why the device serves no one (the hub revoked it), or null. */
  outOfService: () => OutOfService | null;
  version: string;
}

/**
 * The kiosk runs on the device itself. A request is the kiosk's when it carries the device's
 * kiosk secret (added by the kiosk shell), came in on the loopback interface, and was not relayed
 * by a proxy. The address alone decides nothing: behind a reverse proxy on the same box every
 * request comes from 127.0.0.1.
 */
function kioskOnly(secret: KioskSecret) {
  return async (ctx: Context, next: Next): Promise<void> => {
    if (!fromLoopback(ctx)) throw new ServiceError('not_found', 'route_not_found', 'no such endpoint');
    if (relayedByProxy(ctx)) {
      throw new ServiceError('forbidden', 'kiosk_only', 'the kiosk API does not answer requests relayed by a proxy (Forwarded, X-Forwarded-For or Via)');
    }
    if (!secret.matches(ctx.get(KIOSK_HEADER) || undefined)) {
      // found: a 403 that named neither the header nor the file left the operator guessing
      throw new ServiceError(
        'forbidden',
        'kiosk_only',
        `the door screen (/kiosk and /kiosk/v1) answers the door's own kiosk shell only, which sends the header ${KIOSK_HEADER} with the secret in ${secret.file}. To open it in a browser for a test, send that header (README, "Kiosk"), or run the kiosk shell`,
      );
    }
    await next();
  };
}

const startAtDoor = z.strictObject({ pin: z.string().max(16).optional() }).meta({ id: 'KioskSessionRequest' });
const openOnKiosk = z.strictObject({ door: z.string().min(1).max(64), biometry_url: z.string().max(2048) }).meta({ id: 'KioskOpenRequest' });

/**
 * The door screen: GET /kiosk?door=<id> (the page), /kiosk/v1/* for the page (loopback only),
 * and POST /device/v1/kiosk/open for integrators to show an enrolment session on a door's screen.
 */
export function kioskRoutes(deps: DeviceDeps): Router {
  const router = new Router();
  const kioskCall = kioskOnly(deps.kioskSecret);
  const html = pageHtml('kiosk.html');

  router.get('/kiosk', kioskCall, (ctx) => {
    ctx.set('Content-Security-Policy', CAPTURE_CSP);
    ctx.set('Permissions-Policy', 'camera=(self), microphone=(), geolocation=()');
    ctx.type = 'html';
    ctx.body = html;
  });

  router.get('/kiosk/v1/doors/:door', kioskCall, (ctx) => {
    const door = deps.kiosk.door(ctx.params.door);
    ctx.body = {
      id: door.id,
      name: door.name ?? door.id,
      liveness: deps.kiosk.liveness(door),
      factor: door.factor,
      cooldown_seconds: deps.config.kiosk.cooldown_seconds,
      result_seconds: deps.config.kiosk.result_seconds,
      out_of_service: outOfServiceView(deps.outOfService()),
    };
  });

  router.post('/kiosk/v1/doors/:door/sessions', kioskCall, async (ctx) => {
    // the PIN of a face+pin door travels in the body only (never a URL), and is never logged
    const { pin } = ctx.request.length ? await readJson(ctx, startAtDoor) : { pin: undefined };
    const s = await deps.kiosk.startIdentify(ctx.params.door, pin);
    ctx.body = { token: s.token, client_state: s.clientState, liveness: s.liveness, factor: s.factor };
  });

  // decisions for this door and sessions pushed to it, as server-sent events
  router.get('/kiosk/v1/doors/:door/events', kioskCall, (ctx) => {
    const door = deps.kiosk.door(ctx.params.door).id;
    const stream = new PassThrough();
    const send = (event: string, data: object) => stream.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    const off = [
      deps.events.on('access.decided', (e) => {
        if (e.doorId === door) send('access', { client_state: e.clientState, result: e.result, reason: e.reason, factor: e.factor });
      }),
      deps.events.on('kiosk.open', (e) => {
        if (e.doorId === door) send('session', { path: e.biometryUrl });
      }),
      // the screen says at once that the door is out of service
      deps.events.on('device.revoked', () => send('out_of_service', outOfServiceView(deps.outOfService()) ?? {})),
    ];
    const keepAlive = setInterval(() => stream.write(': keep-alive\n\n'), 15_000);
    const stop = () => {
      clearInterval(keepAlive);
      for (const o of off) o();
      stream.end();
    };
    ctx.req.on('close', stop);
    ctx.req.socket.setTimeout(0);
    ctx.type = 'text/event-stream';
    ctx.set('Cache-Control', 'no-store');
    ctx.set('X-Accel-Buffering', 'no');
    ctx.status = 200;
    ctx.body = stream;
    stream.write(': connected\n\n');
  });

  const tenantOf = (ctx: Context) => {
    const key = bearer(ctx);
    const tenant = key ? deps.tenants.findByApiKey(key) : undefined;
    if (!tenant) throw new ServiceError('unauthorized', 'invalid_api_key', 'send a valid API key as Authorization: Bearer <key>');
    return tenant;
  };

  // the device as its integrator sees it: doors, remote commands, and how its broker link is
  router.get('/device/v1/status', (ctx) => {
    tenantOf(ctx);
    ctx.body = {
      success: true,
      device_id: deps.config.device_id,
      version: deps.version,
      doors: deps.config.doors.map((d) => ({ id: d.id, name: d.name ?? d.id, liveness: deps.kiosk.liveness(d) })),
      remote_commands: deps.config.remote_commands.enabled,
      mqtt: deps.mqttLink(),
      out_of_service: outOfServiceView(deps.outOfService()),
    };
  });

  router.post('/device/v1/kiosk/open', async (ctx) => {
    const tenant = tenantOf(ctx);
    const body = await readJson(ctx, openOnKiosk);
    await deps.kiosk.open(body.door, body.biometry_url, tenant.id);
    ctx.body = { success: true, door: body.door };
  });

  return router;
}

const outOfServiceView = (out: OutOfService | null) => out && { reason: out.code, since: out.since, message: out.message };
