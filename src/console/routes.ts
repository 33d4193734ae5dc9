import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import Router from '@koa/router';
import type { Context, Next } from 'koa';
import { STATUS, readBody, toServiceError } from '../api/http.ts';
import type { Logger } from '../core/logger.ts';
import { hashSecret } from '../core/secrets.ts';
import { ServiceError } from '../errors.ts';
import { CONFLICT_RESOLUTIONS, isConflictResolution } from '../hub/conflicts.ts';
import { assertUsablePin } from '../users/service.ts';
import { hashPassword, verifyPassword } from '../mqtt/users-file.ts';
import { CONSOLE_DIR, type Frame, type Section, activityBody, activityCsv, doorsBody, esc, eventItem, fleetBody, layout, page, peopleBody, signInPage, t } from './pages.ts';
import { clientAddress, trustedProxies } from './signin-throttle.ts';
import type { ConsoleSession, ConsoleSource, ConsoleTenant } from './source.ts';

/** Like the capture page's: this origin only, no inline script or style, forms post here only. */
export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "form-action 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

const SESSION_COOKIE = 'authface_console';
const LOGIN_COOKIE = 'authface_console_login';
const SESSION_HOURS = 8;
const FORM_LIMIT = 8 * 1024;
/** The live feed asks the source for new door events this often (it works across hub processes). */
const FEED_POLL_MS = 1000;
const FEED_KEEPALIVE_MS = 15_000;
const FEED_LOOKBACK_MS = 10_000;

interface ConsoleState {
  session: ConsoleSession;
  tokenHash: Buffer;
}

/**
 * The admin console at `/console`: sign-in with an account the CLI made, a session cookie
 * (HttpOnly, SameSite=Strict, Secure over https; only its hash is stored), and a CSRF token in
 * every form that changes something, checked with the request's Origin. The pages are HTML from
 * the server (they work with the keyboard and without script); one small script adds the live
 * door feed (server-sent events). Every string is in src/console/locales/en.json.
 */
export function consoleRoutes(source: ConsoleSource, options: { logger: Logger; publicUrl: string; trustedProxies?: readonly string[]; warnings?: readonly string[] }): Router {
  const trusted = trustedProxies(options.trustedProxies ?? []);
  const { logger } = options;
  // Secure cookies when the console is reached over https (also behind a proxy that ends TLS)
  const secure = options.publicUrl.startsWith('https:');
  const setCookie = (ctx: Context, name: string, value: string, maxAgeSeconds: number) => {
    // the cookies library refuses a Secure cookie on a plain connection unless told it is secure
    if (secure) (ctx.cookies as unknown as { secure: boolean }).secure = true;
    ctx.cookies.set(name, value, { httpOnly: true, sameSite: 'strict', secure: secure || ctx.secure, path: '/console', maxAge: maxAgeSeconds * 1000, overwrite: true });
  };
  const router = new Router({ prefix: '/console' });

  // an HTML answer for the console's own errors (the API's error layer answers JSON)
  router.use(async (ctx, next) => {
    ctx.set('Content-Security-Policy', CONSOLE_CSP);
    // with no-referrer (the API's), a browser sends `Origin: null` even to this origin: same-origin
    // lets the Origin check below tell this console's own forms from another site's
    ctx.set('Referrer-Policy', 'same-origin');
    try {
      await next();
    } catch (err) {
      const e = toServiceError(err);
      if (!e) throw err;
      ctx.status = STATUS[e.kind];
      ctx.type = 'html';
      ctx.body = page(t('title'), `<main id="main"><h1>${esc(t('title'))}</h1><p class="error" role="alert">${esc(e.message)}</p><p><a href="/console">${esc(t('nav.fleet'))}</a></p></main>`);
    }
  });

  router.get('/assets/:file', (ctx) => {
    const file = ({ 'console.css': 'text/css', 'console.js': 'application/javascript' } as Record<string, string>)[ctx.params.file];
    if (!file) throw new ServiceError('not_found', 'asset_not_found', t('error.notfound'));
    ctx.type = file;
    ctx.set('Cache-Control', 'public, max-age=3600');
    ctx.body = fs.createReadStream(path.join(CONSOLE_DIR, 'assets', ctx.params.file));
  });

  router.get('/signin', (ctx) => {
    const loginToken = crypto.randomBytes(24).toString('base64url');
    setCookie(ctx, LOGIN_COOKIE, loginToken, 10 * 60);
    ctx.type = 'html';
    ctx.body = signInPage({ loginToken, scope: source.scope });
  });

  router.post('/signin', async (ctx) => {
    sameOrigin(ctx);
    const form = await readForm(ctx);
    const expected = ctx.cookies.get(LOGIN_COOKIE);
    if (!expected || !equal(form.get('_login') ?? '', expected)) throw new ServiceError('forbidden', 'csrf', t('error.csrf'));
    const name = (form.get('name') ?? '').trim().slice(0, 128);
    const password = form.get('password') ?? '';
    const now = Date.now();
    const address = clientAddress(ctx.req.socket.remoteAddress, ctx.get('x-forwarded-for') || undefined, trusted);
    const again = (error: string, status: number) => {
      const loginToken = crypto.randomBytes(24).toString('base64url');
      setCookie(ctx, LOGIN_COOKIE, loginToken, 10 * 60);
      ctx.status = status;
      ctx.type = 'html';
      ctx.body = signInPage({ loginToken, error, scope: source.scope });
    };
    // a wait is per name and address: it slows whoever keeps failing, never the admin elsewhere
    const wait = await source.signIns.wait(name, address);
    if (wait > 0) {
      ctx.set('Retry-After', String(Math.ceil(wait / 1000)));
      return again(t('signin.throttled', { seconds: Math.ceil(wait / 1000) }), 429);
    }
    const admin = name ? await source.admin(name) : null;
    // a name that is not an admin costs the same as a wrong password
    const ok = await verifyPassword(password, admin?.passwordHash ?? DUMMY_HASH);
    if (!admin || !ok) {
      await source.signIns.failed(name, address);
      logger.warn({ admin: name.slice(0, 64), address }, 'console: a sign-in failed');
      return again(t('signin.failed'), 401);
    }
    await source.signIns.succeeded(name, address);
    const token = crypto.randomBytes(32).toString('base64url');
    await source.createSession(hashSecret(token), { admin: admin.name, csrf: crypto.randomBytes(24).toString('base64url'), expiresAt: new Date(now + SESSION_HOURS * 3_600_000).toISOString() });
    setCookie(ctx, SESSION_COOKIE, token, SESSION_HOURS * 3600);
    ctx.cookies.set(LOGIN_COOKIE, null, { path: '/console' });
    logger.info({ admin: admin.name }, 'console: an admin signed in');
    ctx.redirect('/console/fleet');
  });

  // everything below needs a signed-in admin
  router.use(async (ctx: Context, next: Next) => {
    if (ctx.path.startsWith('/console/assets/') || ctx.path === '/console/signin') return next();
    const token = ctx.cookies.get(SESSION_COOKIE);
    const tokenHash = token ? hashSecret(token) : null;
    const session = tokenHash ? await source.session(tokenHash) : null;
    if (!session || !tokenHash) {
      if (ctx.method === 'GET') return ctx.redirect('/console/signin');
      throw new ServiceError('unauthorized', 'signed_out', t('signin.title'));
    }
    (ctx.state as ConsoleState).session = session;
    (ctx.state as ConsoleState).tokenHash = tokenHash;
    return next();
  });

  router.get('/', (ctx) => ctx.redirect('/console/fleet'));

  router.post('/signout', async (ctx) => {
    await checkForm(ctx);
    await source.deleteSession((ctx.state as ConsoleState).tokenHash);
    ctx.cookies.set(SESSION_COOKIE, null, { path: '/console' });
    ctx.redirect('/console/signin');
  });

  /** The frame of a page: the admin, the tenants and the one chosen (the first when none is). */
  const frameOf = async (ctx: Context, section: Section): Promise<Frame> => {
    const tenants = await source.tenants();
    const asked = typeof ctx.query.tenant === 'string' ? ctx.query.tenant : undefined;
    const tenant: ConsoleTenant | undefined = asked ? tenants.find((x) => x.id === asked) : tenants[0];
    if (!tenant) throw new ServiceError('not_found', 'tenant_not_found', asked ? `no tenant ${asked}` : 'no tenant yet (authface hub tenant add)');
    const { session } = ctx.state as ConsoleState;
    return { admin: session.admin, csrf: session.csrf, tenants, tenant, section, scope: source.scope, warnings: options.warnings ?? [] };
  };
  const html = (ctx: Context, body: string) => {
    ctx.type = 'html';
    ctx.body = body;
  };

  router.get('/fleet', async (ctx) => {
    const frame = await frameOf(ctx, 'fleet');
    html(ctx, layout(frame, t('fleet.title'), fleetBody(await source.devices(frame.tenant.id), await source.modelCoverage(frame.tenant.id))));
  });

  router.get('/doors', async (ctx) => {
    const frame = await frameOf(ctx, 'doors');
    const tenantId = frame.tenant.id;
    const recent = await source.activity(tenantId, { limit: 200 });
    const doorEvents = recent.filter((e) => ['access_decision', 'remote_unlock', 'door_alarm'].includes(e.type));
    const outcome = doorNotice((ctx.state as ConsoleState).session, ctx.query);
    const notices: Record<DoorOutcome, string> = { ok: 'doors.unlocked', failed: 'doors.unlock_failed', shown: 'doors.shown', show_failed: 'doors.show_failed' };
    const notice = outcome ? t(notices[outcome.outcome], { ...outcome }) : null;
    html(
      ctx,
      layout(
        frame,
        t('doors.title'),
        doorsBody({
          doors: await source.doors(tenantId),
          recent: doorEvents.slice(0, 20),
          alarms: doorEvents.filter((e) => e.type === 'door_alarm').slice(0, 10),
          notice,
          noticeOk: outcome?.outcome === 'ok' || outcome?.outcome === 'shown',
          csrf: frame.csrf,
          tenantId,
          since: doorEvents[0]?.time ?? new Date().toISOString(),
        }),
      ),
    );
  });

  router.post('/doors/unlock', async (ctx) => {
    const form = await checkForm(ctx);
    const [tenantId, deviceId, doorId] = ['tenant', 'device_id', 'door_id'].map((k) => form.get(k) ?? '');
    const known = (await source.doors(tenantId)).some((d) => d.deviceId === deviceId && d.doorId === doorId);
    if (!known) throw new ServiceError('not_found', 'door_not_found', `no door ${doorId} on ${deviceId}`);
    const { ok, error } = await source.unlock(tenantId, deviceId, doorId);
    logger.info({ admin: (ctx.state as ConsoleState).session.admin, device: deviceId, door: doorId, ok }, 'console: remote unlock');
    ctx.redirect(`/console/doors?${doorNoticeQuery((ctx.state as ConsoleState).session, tenantId, { outcome: ok ? 'ok' : 'failed', device: deviceId, door: doorId, error: error ?? '' })}`);
  });

  router.post('/doors/open-session', async (ctx) => {
    const form = await checkForm(ctx);
    const [tenantId, deviceId, doorId, biometryUrl] = ['tenant', 'device_id', 'door_id', 'biometry_url'].map((k) => (form.get(k) ?? '').trim());
    const known = (await source.doors(tenantId)).some((d) => d.deviceId === deviceId && d.doorId === doorId);
    if (!known) throw new ServiceError('not_found', 'door_not_found', `no door ${doorId} on ${deviceId}`);
    if (!/^https?:\/\/\S{1,2040}$/.test(biometryUrl)) throw new ServiceError('invalid_request', 'invalid_biometry_url', 'biometry_url: an http(s) capture link');
    const { ok, error } = await source.openSession(tenantId, deviceId, doorId, biometryUrl);
    logger.info({ admin: (ctx.state as ConsoleState).session.admin, device: deviceId, door: doorId, ok }, 'console: a capture link shown on a door');
    ctx.redirect(`/console/doors?${doorNoticeQuery((ctx.state as ConsoleState).session, tenantId, { outcome: ok ? 'shown' : 'show_failed', device: deviceId, door: doorId, error: error ?? '' })}`);
  });

  // the live door feed (server-sent events); the page works without it
  router.get('/doors/events', async (ctx) => {
    const frame = await frameOf(ctx, 'doors');
    let since = typeof ctx.query.since === 'string' && !Number.isNaN(Date.parse(ctx.query.since)) ? new Date(ctx.query.since).toISOString() : new Date().toISOString();
    const stream = new PassThrough();
    ctx.req.socket.setTimeout(0);
    ctx.type = 'text/event-stream';
    ctx.set('Cache-Control', 'no-store');
    ctx.body = stream;
    let busy = false;
    const sent = new Set<string>();
    const poll = async () => {
      if (busy) return;
      busy = true;
      try {
        // a little behind the last event: a row's time is its transaction's start, so a row
        // committed after a later one can carry an earlier time; what was sent is not sent again
        const from = new Date(Date.parse(since) - FEED_LOOKBACK_MS).toISOString();
        for (const e of await source.doorEventsSince(frame.tenant.id, from, 200)) {
          if (sent.has(e.id)) continue;
          sent.add(e.id);
          if (e.time > since) since = e.time;
          stream.write(`event: door\ndata: ${JSON.stringify({ id: e.id, html: eventItem(e) })}\n\n`);
        }
        if (sent.size > 2000) for (const id of [...sent].slice(0, 1000)) sent.delete(id);
      } catch (err) {
        logger.warn({ problem: (err as Error).message }, 'console: the live feed could not read events');
      } finally {
        busy = false;
      }
    };
    const timer = setInterval(() => void poll(), FEED_POLL_MS);
    const keepalive = setInterval(() => stream.write(': keepalive\n\n'), FEED_KEEPALIVE_MS);
    const stop = () => {
      clearInterval(timer);
      clearInterval(keepalive);
      stream.end();
    };
    // the response's close: the browser left (the request's own close comes as soon as it is read)
    ctx.res.once('close', stop);
    stream.write(': live\n\n');
  });

  router.get('/people', async (ctx) => {
    const frame = await frameOf(ctx, 'people');
    const tenantId = frame.tenant.id;
    const query = typeof ctx.query.q === 'string' ? ctx.query.q.slice(0, 128) : '';
    const { people, total } = await source.people(tenantId, query, 100);
    const devices = (await source.devices(tenantId)).filter((d) => d.state !== 'revoked').length;
    html(ctx, layout(frame, t('people.title'), peopleBody({ people, total, query, devices, erasures: await source.erasures(tenantId), conflicts: await source.conflicts(tenantId), tenantId, csrf: frame.csrf, pinForms: source.scope === 'hub' })));
  });

  // an admin sets or removes a person's PIN (a change of the log; the PIN is in the form only, never logged)
  router.post('/people/pin', async (ctx) => {
    const form = await checkForm(ctx);
    const [tenantId, user, pin, action] = ['tenant', 'user', 'pin', 'action'].map((k) => form.get(k) ?? '');
    if (!(await source.tenants()).some((x) => x.id === tenantId)) throw new ServiceError('not_found', 'tenant_not_found', `no tenant ${tenantId}`);
    if (action !== 'set' && action !== 'remove') throw new ServiceError('invalid_request', 'invalid_action', 'action: set or remove');
    if (action === 'set') assertUsablePin(pin);
    const admin = (ctx.state as ConsoleState).session.admin;
    const { error } = await source.setPin(tenantId, user, action === 'set' ? pin : null, admin);
    if (error) throw new ServiceError('invalid_request', 'pin_not_changed', error);
    logger.info({ admin, user, pin: action === 'set' ? 'set' : 'removed' }, "console: a person's PIN changed");
    ctx.redirect(`/console/people?${new URLSearchParams({ tenant: tenantId, q: user }).toString()}`);
  });

  // an admin ends a conflict: keep the hub's version, take the door's change, or delete the person
  router.post('/conflicts/resolve', async (ctx) => {
    const form = await checkForm(ctx);
    const [tenantId, changeId, resolution] = ['tenant', 'change_id', 'resolution'].map((k) => form.get(k) ?? '');
    if (!(await source.tenants()).some((x) => x.id === tenantId)) throw new ServiceError('not_found', 'tenant_not_found', `no tenant ${tenantId}`);
    if (!isConflictResolution(resolution)) throw new ServiceError('invalid_request', 'invalid_resolution', `resolution: one of ${CONFLICT_RESOLUTIONS.join(', ')}`);
    const admin = (ctx.state as ConsoleState).session.admin;
    const { error } = await source.resolveConflict(tenantId, changeId, resolution, admin);
    if (error) throw new ServiceError('invalid_request', 'conflict_not_resolved', error);
    logger.info({ admin, change: changeId, resolution }, 'console: a conflict resolved');
    ctx.redirect(`/console/people?${new URLSearchParams({ tenant: tenantId }).toString()}`);
  });

  const activityFilter = (ctx: Context) => {
    const filter: Record<string, string> = {};
    for (const key of ['door', 'person', 'from', 'to']) {
      const v = ctx.query[key];
      if (typeof v === 'string' && v.trim()) filter[key] = v.trim().slice(0, 128);
    }
    for (const key of ['from', 'to']) {
      if (filter[key] && Number.isNaN(Date.parse(`${filter[key]}Z`)) && Number.isNaN(Date.parse(filter[key]))) throw new ServiceError('invalid_request', 'invalid_time', `${key}: not a date and time`);
    }
    // a time without a zone (the form's datetime-local) is UTC, as the pages show times
    const iso = (v: string | undefined) => (v ? new Date(/^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?$/.test(v) ? `${v}Z` : v).toISOString() : undefined);
    return { shown: filter, query: { door: filter.door, person: filter.person, from: iso(filter.from), to: iso(filter.to) } };
  };

  router.get('/activity', async (ctx) => {
    const frame = await frameOf(ctx, 'activity');
    const { shown, query } = activityFilter(ctx);
    html(ctx, layout(frame, t('activity.title'), activityBody({ events: await source.activity(frame.tenant.id, { ...query, limit: 500 }), filter: shown, tenantId: frame.tenant.id })));
  });

  router.get('/activity.csv', async (ctx) => {
    const frame = await frameOf(ctx, 'activity');
    const { query } = activityFilter(ctx);
    ctx.type = 'text/csv; charset=utf-8';
    ctx.set('Content-Disposition', `attachment; filename="activity-${frame.tenant.id}.csv"`);
    ctx.body = activityCsv(await source.activity(frame.tenant.id, { ...query, limit: 100_000 }));
  });

  return router;
}

/** A hash of a password nobody knows, so an unknown name takes as long as a known one. */
const DUMMY_HASH = hashPassword(crypto.randomBytes(24).toString('base64url'));

/**
 * A browser sends Origin with every POST: one from another site (or `null`, an opaque origin) is
 * refused (with SameSite=Strict and the token, a third wall).
 */
function sameOrigin(ctx: Context): void {
  const origin = ctx.get('Origin');
  // this server's own origin, from the Host it was reached at (Koa's ctx.origin may echo the header)
  if (origin && origin !== `${ctx.protocol}://${ctx.host}`) throw new ServiceError('forbidden', 'csrf', t('error.csrf'));
}

type DoorOutcome = 'ok' | 'failed' | 'shown' | 'show_failed';
interface DoorNotice {
  outcome: DoorOutcome;
  device: string;
  door: string;
  error: string;
}
const DOOR_OUTCOMES: readonly string[] = ['ok', 'failed', 'shown', 'show_failed'] satisfies DoorOutcome[];

/**
 * What the Doors page says after an unlock or a capture link: the redirect carries it with a MAC
 * keyed by the session's own secret (its CSRF token), so only the server, for this session, can
 * make the page say that a door was unlocked; a crafted link shows nothing. It works on any hub
 * process, as the session does.
 */
function doorNoticeQuery(session: ConsoleSession, tenantId: string, notice: DoorNotice): string {
  return new URLSearchParams({ tenant: tenantId, ...notice, proof: doorNoticeProof(session, tenantId, notice) }).toString();
}

function doorNotice(session: ConsoleSession, query: Context['query']): DoorNotice | null {
  const [tenant, outcome, device, door, error, proof] = ['tenant', 'outcome', 'device', 'door', 'error', 'proof'].map((k) => (typeof query[k] === 'string' ? (query[k] as string) : ''));
  if (!DOOR_OUTCOMES.includes(outcome)) return null;
  const notice: DoorNotice = { outcome: outcome as DoorOutcome, device, door, error };
  return equal(proof, doorNoticeProof(session, tenant, notice)) ? notice : null;
}

function doorNoticeProof(session: ConsoleSession, tenantId: string, notice: DoorNotice): string {
  return crypto.createHmac('sha256', `authface-console-notice\n${session.csrf}`).update(JSON.stringify([tenantId, notice.outcome, notice.device, notice.door, notice.error])).digest('base64url');
}

/** A form that changes something: same origin, and the session's CSRF token. */
async function checkForm(ctx: Context): Promise<URLSearchParams> {
  sameOrigin(ctx);
  const form = await readForm(ctx);
  const { session } = ctx.state as ConsoleState;
  if (!equal(form.get('_csrf') ?? '', session.csrf)) throw new ServiceError('forbidden', 'csrf', t('error.csrf'));
  return form;
}

async function readForm(ctx: Context): Promise<URLSearchParams> {
  if (!ctx.is('application/x-www-form-urlencoded')) throw new ServiceError('unsupported_media_type', 'unsupported_media_type', 'send the form as application/x-www-form-urlencoded');
  return new URLSearchParams(await readBody(ctx, FORM_LIMIT, 'utf8'));
}

function equal(a: string, b: string): boolean {
  const x = hashSecret(a);
  const y = hashSecret(b);
  return crypto.timingSafeEqual(x, y) && a.length > 0;
}
