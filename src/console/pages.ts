import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { migrationProgress } from '../biometrics/matchers/index.ts';
import type { ConsoleConflict, ConsoleDevice, ConsoleDoor, ConsoleErasure, ConsoleEvent, ConsolePerson, ConsoleTenant, ModelCoverage } from './source.ts';

/** The console's own files (styles, script, locales) live in the source tree, from src/ or dist/ alike. */
export const CONSOLE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'console');

const STRINGS = JSON.parse(fs.readFileSync(path.join(CONSOLE_DIR, 'locales', 'en.json'), 'utf8')) as Record<string, string>;

/**
 * A string of the locale file, with `{name}` replaced (the values are escaped by `html`). For
 * `n` = 1 the `<key>.one` form is used when there is one (found: "1 changes").
 */
export function t(key: string, vars: Record<string, string | number> = {}): string {
  const text = (vars.n === 1 ? STRINGS[`${key}.one`] : undefined) ?? STRINGS[key];
  if (text === undefined) throw new Error(`console: no string ${key} in the locale file`);
  return text.replace(/\{(\w+)\}/g, (_m, name: string) => String(vars[name] ?? ''));
}

/** Text made safe for HTML (element content and quoted attributes). */
export function esc(value: unknown): string {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);
}

export type Section = 'fleet' | 'doors' | 'people' | 'activity';

export interface Frame {
  admin: string;
  csrf: string;
  tenants: ConsoleTenant[];
  tenant: ConsoleTenant;
  section: Section;
  /** The device's own console: one tenant, no fleet-wide words. */
  scope: 'hub' | 'device';
  /** What the operator must know on every page (the hub on a broker without per-device rights). */
  warnings: readonly string[];
}

/** Every page: a skip link, the sections, the tenant chooser (a plain GET form), and sign-out. */
export function layout(frame: Frame, title: string, body: string): string {
  const link = (section: Section) =>
    `<li><a href="/console/${section}?tenant=${encodeURIComponent(frame.tenant.id)}"${section === frame.section ? ' aria-current="page"' : ''}>${esc(t(`nav.${section}`))}</a></li>`;
  const tenants =
    frame.tenants.length > 1
      ? `<form class="tenant" method="get" action="/console/${frame.section}">
      <label for="tenant">${esc(t('tenant.label'))}</label>
      <select id="tenant" name="tenant">${frame.tenants.map((x) => `<option value="${esc(x.id)}"${x.id === frame.tenant.id ? ' selected' : ''}>${esc(x.name)}</option>`).join('')}</select>
      <button type="submit">${esc(t('tenant.show'))}</button>
    </form>`
      : `<p class="tenant">${esc(t('tenant.label'))}: <strong>${esc(frame.tenant.name)}</strong></p>`;
  return page(
    `${title} · ${t('title')}`,
    `<a class="skip" href="#main">${esc(t('skip'))}</a>
  <header>
    <p class="brand">${esc(t('title'))}</p>
    <nav aria-label="${esc(t('nav.label'))}"><ul>${(['fleet', 'doors', 'people', 'activity'] as Section[]).map(link).join('')}</ul></nav>
    ${tenants}
    <form class="signout" method="post" action="/console/signout">
      <input type="hidden" name="_csrf" value="${esc(frame.csrf)}">
      <span>${esc(t('signedin', { name: frame.admin }))}</span>
      <button type="submit">${esc(t('signout'))}</button>
    </form>
  </header>
  <main id="main" tabindex="-1">
    ${frame.warnings.map((w) => `<p class="warn" role="alert">${esc(w)}</p>`).join('')}
    <h1>${esc(title)}</h1>
    ${body}
  </main>`,
  );
}

export function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>${esc(title)}</title>
  <link rel="stylesheet" href="/console/assets/console.css">
  <script src="/console/assets/console.js" defer></script>
</head>
<body>
  ${body}
</body>
</html>`;
}

export function signInPage(opts: { loginToken: string; error?: string; scope: 'hub' | 'device' }): string {
  return page(
    `${t('signin.title')} · ${t('title')}`,
    `<main id="main" class="signin">
    <h1>${esc(t('title'))}</h1>
    <form method="post" action="/console/signin">
      <h2>${esc(t('signin.title'))}</h2>
      ${opts.error ? `<p class="error" role="alert">${esc(opts.error)}</p>` : ''}
      <input type="hidden" name="_login" value="${esc(opts.loginToken)}">
      <label for="name">${esc(t('signin.name'))}</label>
      <input id="name" name="name" autocomplete="username" required autofocus>
      <label for="password">${esc(t('signin.password'))}</label>
      <input id="password" name="password" type="password" autocomplete="current-password" required>
      <button type="submit">${esc(t('signin.submit'))}</button>
      <p class="hint">${esc(t(opts.scope === 'hub' ? 'signin.hint' : 'signin.hint.device'))}</p>
    </form>
  </main>`,
  );
}

const when = (iso: string | null) => (iso ? `<time datetime="${esc(iso)}">${esc(iso.replace('T', ' ').slice(0, 19))}</time>` : '—');

export function fleetBody(devices: ConsoleDevice[], coverage: ModelCoverage): string {
  // how far the tenant's move to the new face model has come (README, "Moving to a new model")
  const migration = coverage.people > 0 ? `<p class="migration">${esc(migrationProgress(coverage))}</p>` : '';
  if (devices.length === 0) return `${migration}<p>${esc(t('fleet.none'))}</p>`;
  const online = devices.filter((d) => d.state === 'online').length;
  const rows = devices
    .map(
      (d) => `<tr>
      <th scope="row">${esc(d.deviceId)}</th>
      <td><span class="state state-${esc(d.state)}">${esc(t(`state.${d.state}`))}</span>${d.diverged ? ` <span class="warn">${esc(t('fleet.diverged'))}</span>` : ''}</td>
      <td>${d.lag === null ? '—' : d.lag === 0 ? esc(t('fleet.uptodate')) : esc(t('fleet.changes', { n: d.lag }))}</td>
      <td>${esc(d.users ?? '—')}</td>
      <td>${esc(d.version ?? '—')}</td>
      <td>${esc(d.model ?? '—')}</td>
      <td>${when(d.lastSeen)}</td>
    </tr>`,
    )
    .join('');
  return `<p class="summary">${esc(t('fleet.summary', { online, total: devices.length }))}</p>${migration}
  <table>
    <thead><tr><th scope="col">${esc(t('fleet.device'))}</th><th scope="col">${esc(t('fleet.state'))}</th><th scope="col">${esc(t('fleet.lag'))}</th><th scope="col">${esc(t('fleet.users'))}</th><th scope="col">${esc(t('fleet.version'))}</th><th scope="col">${esc(t('fleet.model'))}</th><th scope="col">${esc(t('fleet.seen'))}</th></tr></thead>
    <tbody>${rows}</tbody>
  </table>`;
}

/** An event's kind in words (the locale's, or its own name for an audit event). */
export function eventName(type: string): string {
  return `event.${type}` in STRINGS ? t(`event.${type}`) : type;
}

export function eventItem(e: ConsoleEvent): string {
  // the reason only when it says more than the kind (a remote unlock's reason is its kind)
  const what = [eventName(e.type), e.result, e.reason !== e.type ? e.reason : null].filter(Boolean).join(' · ');
  return `<li class="event event-${esc(e.result ?? e.type)}" data-id="${esc(e.id)}">${when(e.time)} <strong>${esc(e.deviceId)}${e.doorId ? ` / ${esc(e.doorId)}` : ''}</strong> ${esc(what)}${e.externalUserId ? ` — ${esc(e.externalUserId)}` : ''}</li>`;
}

export function doorsBody(opts: { doors: ConsoleDoor[]; recent: ConsoleEvent[]; alarms: ConsoleEvent[]; notice: string | null; noticeOk: boolean; csrf: string; tenantId: string; since: string }): string {
  const doors =
    opts.doors.length === 0
      ? `<p>${esc(t('doors.none'))}</p>`
      : `<table>
    <thead><tr><th scope="col">${esc(t('doors.device'))}</th><th scope="col">${esc(t('doors.door'))}</th><th scope="col">${esc(t('doors.actions'))}</th></tr></thead>
    <tbody>${opts.doors
      .map(
        (d) => `<tr><td>${esc(d.deviceId)}</td><th scope="row">${esc(d.doorId)}</th><td>
        <form method="post" action="/console/doors/unlock">
          <input type="hidden" name="_csrf" value="${esc(opts.csrf)}">
          <input type="hidden" name="tenant" value="${esc(opts.tenantId)}">
          <input type="hidden" name="device_id" value="${esc(d.deviceId)}">
          <input type="hidden" name="door_id" value="${esc(d.doorId)}">
          <button type="submit" aria-label="${esc(t('doors.unlock.label', { door: d.doorId, device: d.deviceId }))}">${esc(t('doors.unlock'))}</button>
        </form>
        <form class="show" method="post" action="/console/doors/open-session">
          <input type="hidden" name="_csrf" value="${esc(opts.csrf)}">
          <input type="hidden" name="tenant" value="${esc(opts.tenantId)}">
          <input type="hidden" name="device_id" value="${esc(d.deviceId)}">
          <input type="hidden" name="door_id" value="${esc(d.doorId)}">
          <label for="link-${esc(d.deviceId)}-${esc(d.doorId)}">${esc(t('doors.link'))}</label>
          <input id="link-${esc(d.deviceId)}-${esc(d.doorId)}" name="biometry_url" type="url" required aria-describedby="link-hint">
          <button type="submit" aria-label="${esc(t('doors.show.label', { door: d.doorId, device: d.deviceId }))}">${esc(t('doors.show'))}</button>
        </form></td></tr>`,
      )
      .join('')}</tbody>
  </table>
  <p class="hint" id="link-hint">${esc(t('doors.link.hint'))}</p>`;
  return `${opts.notice ? `<p class="${opts.noticeOk ? 'ok' : 'error'}" role="status">${esc(opts.notice)}</p>` : ''}
  ${doors}
  <h2>${esc(t('doors.alarms'))}</h2>
  ${opts.alarms.length ? `<ul class="events">${opts.alarms.map(eventItem).join('')}</ul>` : `<p>${esc(t('doors.noalarm'))}</p>`}
  <h2 id="live-title">${esc(t('doors.live'))}</h2>
  <p class="hint">${esc(t('doors.live.hint'))}</p>
  <ol id="live" class="events" aria-labelledby="live-title" aria-live="polite" data-feed="/console/doors/events?tenant=${esc(encodeURIComponent(opts.tenantId))}&amp;since=${esc(encodeURIComponent(opts.since))}">${[...opts.recent].reverse().map(eventItem).join('')}</ol>`;
}

export function peopleBody(opts: {
  people: ConsolePerson[];
  total: number;
  query: string;
  devices: number;
  erasures: ConsoleErasure[];
  conflicts: ConsoleConflict[];
  tenantId: string;
  csrf: string;
  /** PINs are set here (the hub's console): a form on each row. */
  pinForms: boolean;
}): string {
  const pinCell = (p: ConsolePerson) => {
    const held = esc(t(p.pin ? 'people.pin.yes' : 'people.pin.no'));
    if (!opts.pinForms) return `<td>${held}</td>`;
    const id = `pin-${esc(p.externalUserId)}`;
    return `<td>${held}
        <form method="post" action="/console/people/pin" class="inline">
          <input type="hidden" name="_csrf" value="${esc(opts.csrf)}">
          <input type="hidden" name="tenant" value="${esc(opts.tenantId)}">
          <input type="hidden" name="user" value="${esc(p.externalUserId)}">
          <label class="visually-hidden" for="${id}">${esc(t('people.pin.set.label', { person: p.externalUserId }))}</label>
          <input id="${id}" name="pin" type="password" inputmode="numeric" pattern="[0-9]{4,8}" autocomplete="off" size="8">
          <button type="submit" name="action" value="set">${esc(t('people.pin.set'))}</button>
          ${p.pin ? `<button type="submit" name="action" value="remove" aria-label="${esc(t('people.pin.remove.label', { person: p.externalUserId }))}">${esc(t('people.pin.remove'))}</button>` : ''}
        </form></td>`;
  };
  const rows = opts.people
    .map(
      (p) => `<tr>
      <th scope="row">${esc(p.externalUserId)}</th>
      <td>${esc(p.version)}</td>
      <td>${esc(p.groups.join(', ') || '—')}</td>
      ${pinCell(p)}
      <td><span title="${esc(p.heldBy.join(', '))}">${esc(t('people.held.count', { n: p.heldBy.length, total: opts.devices }))}</span>${p.heldBy.length ? ` <span class="muted">(${esc(p.heldBy.join(', '))})</span>` : ''}</td>
      <td>${when(p.updatedAt)}</td>
    </tr>`,
    )
    .join('');
  return `<form class="search" method="get" action="/console/people" role="search">
    <input type="hidden" name="tenant" value="${esc(opts.tenantId)}">
    <label for="q">${esc(t('people.search'))}</label>
    <input id="q" name="q" type="search" value="${esc(opts.query)}">
    <button type="submit">${esc(t('people.find'))}</button>
  </form>
  <p class="summary">${esc(t('people.count', { shown: opts.people.length, total: opts.total }))}</p>
  ${
    opts.people.length
      ? `<table><thead><tr><th scope="col">${esc(t('people.id'))}</th><th scope="col">${esc(t('people.version'))}</th><th scope="col">${esc(t('people.groups'))}</th><th scope="col">${esc(t('people.pin'))}</th><th scope="col">${esc(t('people.held'))}</th><th scope="col">${esc(t('people.updated'))}</th></tr></thead><tbody>${rows}</tbody></table>`
      : `<p>${esc(t('people.none'))}</p>`
  }
  <h2>${esc(t('erasure.title'))}</h2>
  ${
    opts.erasures.length
      ? `<ul>${opts.erasures.map((e) => `<li><strong>${esc(e.externalUserId)}</strong>: ${esc(t('erasure.status', { applied: e.applied, devices: e.devices }))}${e.complete ? ` (${esc(t('erasure.complete'))})` : ''}</li>`).join('')}</ul>`
      : `<p>${esc(t('erasure.none'))}</p>`
  }
  <h2>${esc(t('conflicts.title'))}</h2>
  ${
    opts.conflicts.length
      ? `<table><thead><tr><th scope="col">${esc(t('people.id'))}</th><th scope="col">${esc(t('conflicts.origin'))}</th><th scope="col">${esc(t('conflicts.reason'))}</th><th scope="col">${esc(t('conflicts.change'))}</th><th scope="col">${esc(t('conflicts.resolve'))}</th></tr></thead><tbody>${opts.conflicts
          .map(
            (c) => `<tr><th scope="row">${esc(c.externalUserId)}</th><td>${esc(c.origin)}</td><td>${esc(c.reason)}</td><td><code>${esc(c.changeId)}</code></td><td>
        <form method="post" action="/console/conflicts/resolve">
          <input type="hidden" name="_csrf" value="${esc(opts.csrf)}">
          <input type="hidden" name="tenant" value="${esc(opts.tenantId)}">
          <input type="hidden" name="change_id" value="${esc(c.changeId)}">
          ${(['keep_hub', 'take_door', 'delete'] as const).map((r) => `<button type="submit" name="resolution" value="${r}" aria-label="${esc(t(`conflicts.${r}.label`, { person: c.externalUserId, origin: c.origin }))}">${esc(t(`conflicts.${r}`))}</button>`).join(' ')}
        </form></td></tr>`,
          )
          .join('')}</tbody></table>`
      : `<p>${esc(t('conflicts.none'))}</p>`
  }`;
}

export function activityBody(opts: { events: ConsoleEvent[]; filter: Record<string, string>; tenantId: string }): string {
  const field = (name: string, type = 'text') =>
    `<span><label for="f-${name}">${esc(t(`activity.${name}`))}</label><input id="f-${name}" name="${name}" type="${type}" value="${esc(opts.filter[name] ?? '')}"></span>`;
  const csv = new URLSearchParams({ tenant: opts.tenantId, ...opts.filter });
  return `<form class="filters" method="get" action="/console/activity">
    <input type="hidden" name="tenant" value="${esc(opts.tenantId)}">
    ${field('door')}${field('person')}${field('from', 'datetime-local')}${field('to', 'datetime-local')}
    <button type="submit">${esc(t('activity.filter'))}</button>
  </form>
  <p><a href="/console/activity.csv?${esc(csv.toString())}" download>${esc(t('activity.csv'))}</a></p>
  ${
    opts.events.length
      ? `<table><thead><tr><th scope="col">${esc(t('activity.time'))}</th><th scope="col">${esc(t('activity.device'))}</th><th scope="col">${esc(t('activity.door'))}</th><th scope="col">${esc(t('activity.type'))}</th><th scope="col">${esc(t('activity.result'))}</th><th scope="col">${esc(t('activity.reason'))}</th><th scope="col">${esc(t('activity.person'))}</th></tr></thead><tbody>${opts.events
          .map(
            (e) =>
              `<tr><td>${when(e.time)}</td><td>${esc(e.deviceId)}</td><td>${esc(e.doorId ?? '—')}</td><td>${esc(eventName(e.type))}</td><td>${esc(e.result ?? '—')}</td><td>${esc(e.reason ?? '—')}</td><td>${esc(e.externalUserId ?? '—')}</td></tr>`,
          )
          .join('')}</tbody></table>`
      : `<p>${esc(t('activity.none'))}</p>`
  }`;
}

/**
 * CSV of activity events. A cell that a spreadsheet would run as a formula (it starts, after any
 * blanks, with = + - @, or with a tab or line break) is made text with a leading apostrophe, and a
 * cell holding any separator a spreadsheet may split on (`,` `;` tab) or a quote or line break is
 * quoted: a `;` left bare starts a new cell, and so a formula, where `;` is the separator.
 */
export function activityCsv(events: ConsoleEvent[]): string {
  const cell = (v: string | null) => {
    let s = v ?? '';
    if (/^\s*[=+\-@]|^[\t\r\n]/.test(s)) s = `'${s}`;
    return /[",;\t\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  const header = ['time', 'device_id', 'door_id', 'event', 'result', 'reason', 'external_user_id'];
  return [header.join(','), ...events.map((e) => [e.time, e.deviceId, e.doorId, e.type, e.result, e.reason, e.externalUserId].map(cell).join(','))].join('\r\n') + '\r\n';
}
