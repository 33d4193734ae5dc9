// @ts-check
// The kiosk's rules, kept out of main.js so they can be tested without the Electron binary:
// which page it shows, what it may do (the camera of the local service, nothing else), where it
// may navigate (nowhere else), and how it recovers from a crashed or hung renderer.

/** @typedef {{ url: string, origin: string, dev: boolean, secretFile: string }} KioskConfig */

/** The header that makes a request the door's own kiosk (the service checks it: src/access/kiosk-secret.ts). */
export const KIOSK_HEADER = 'X-Authface-Kiosk';

const LOCAL_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

/**
 * The kiosk's settings from the environment: AUTHFACE_KIOSK_URL (default the local service's
 * /kiosk page), AUTHFACE_KIOSK_SECRET_FILE (the service's kiosk.secret, default in
 * /var/lib/authface) and AUTHFACE_KIOSK_DEV=1 (windowed, with dev tools; never on a door).
 * @param {Record<string, string | undefined>} env
 * @returns {KioskConfig}
 */
export function loadConfig(env) {
  const raw = env.AUTHFACE_KIOSK_URL || 'http://127.0.0.1:8080/kiosk';
  let url;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`AUTHFACE_KIOSK_URL is not a URL: ${raw}`);
  }
  if (!['http:', 'https:'].includes(url.protocol) || !LOCAL_HOSTS.has(url.hostname)) {
    // the kiosk shows the service on this device, never a remote page
    throw new Error(`AUTHFACE_KIOSK_URL must point at this device (127.0.0.1 or localhost): ${raw}`);
  }
  return {
    url: url.toString(),
    origin: url.origin,
    dev: env.AUTHFACE_KIOSK_DEV === '1',
    secretFile: env.AUTHFACE_KIOSK_SECRET_FILE || '/var/lib/authface/kiosk.secret',
  };
}

/**
 * The kiosk secret, read from the service's data directory (the kiosk runs as the service user).
 * @param {KioskConfig} config @param {(file: string) => string} readFile
 */
export function readKioskSecret(config, readFile) {
  let text;
  try {
    text = readFile(config.secretFile).trim();
  } catch (err) {
    throw new Error(`cannot read the kiosk secret ${config.secretFile} (${/** @type {{ code?: string }} */ (err).code ?? err}): start the service once, and run the kiosk as its user`);
  }
  if (!/^[A-Za-z0-9_-]{43}$/.test(text)) throw new Error(`${config.secretFile} does not hold a kiosk secret`);
  return text;
}

/**
 * For session.webRequest.onBeforeSendHeaders: adds the kiosk secret to requests for the local
 * service, and only to those. The page's scripts never see it, and no other site ever gets it.
 * @param {KioskConfig} config @param {string} secret
 */
export function kioskHeaders(config, secret) {
  return (/** @type {{ url: string, requestHeaders: Record<string, string> }} */ details, /** @type {(r: { requestHeaders: Record<string, string> }) => void} */ callback) => {
    const requestHeaders = { ...details.requestHeaders };
    for (const name of Object.keys(requestHeaders)) if (name.toLowerCase() === KIOSK_HEADER.toLowerCase()) delete requestHeaders[name];
    if (safeOrigin(details.url) === config.origin) requestHeaders[KIOSK_HEADER] = secret;
    callback({ requestHeaders });
  };
}

/** Options of the one kiosk window. @param {KioskConfig} config */
export function windowOptions(config) {
  return {
    fullscreen: !config.dev,
    kiosk: !config.dev,
    frame: config.dev,
    autoHideMenuBar: true,
    backgroundColor: '#0b1222',
    webPreferences: {
      contextIsolation: true,
      nodeIntegration: false,
      sandbox: true,
      devTools: config.dev,
      spellcheck: false,
    },
  };
}

/**
 * Only the camera (video, no microphone) and only for the local service's pages.
 * @param {KioskConfig} config @param {string} permission @param {string} origin @param {{ mediaTypes?: string[] }} [details]
 */
export function isAllowedPermission(config, permission, origin, details = {}) {
  if (permission !== 'media') return false;
  if (safeOrigin(origin) !== config.origin) return false;
  const types = details.mediaTypes ?? ['video'];
  return types.length > 0 && types.every((t) => t === 'video');
}

/** For session.setPermissionRequestHandler. @param {KioskConfig} config */
export function permissionRequestHandler(config) {
  return (/** @type {any} */ webContents, /** @type {string} */ permission, /** @type {(ok: boolean) => void} */ callback, /** @type {any} */ details) =>
    callback(isAllowedPermission(config, permission, details?.requestingUrl ?? webContents?.getURL?.() ?? '', details));
}

/** For session.setPermissionCheckHandler. @param {KioskConfig} config */
export function permissionCheckHandler(config) {
  return (/** @type {any} */ _webContents, /** @type {string} */ permission, /** @type {string} */ requestingOrigin, /** @type {any} */ details) =>
    isAllowedPermission(config, permission, requestingOrigin, { mediaTypes: details?.mediaType ? [details.mediaType] : undefined });
}

/** Whether the kiosk may go to `url`: pages of the local service only. @param {KioskConfig} config @param {string} url */
export function mayNavigate(config, url) {
  return safeOrigin(url) === config.origin;
}

/** For 'will-navigate' and 'will-redirect': cancels anything leaving the service. @param {KioskConfig} config */
export function navigationGuard(config) {
  return (/** @type {{ preventDefault(): void }} */ event, /** @type {string} */ url) => {
    if (!mayNavigate(config, url)) event.preventDefault();
  };
}

/** @param {string} url */
function safeOrigin(url) {
  try {
    return new URL(url).origin;
  } catch {
    return null;
  }
}

/**
 * How the kiosk recovers when its page crashes or hangs: reload at once, but when it keeps failing
 * (more than `burst` failures within `windowMs`) wait `cooldownMs` before the next reload so a
 * broken page cannot spin the CPU of the door device.
 */
export class RestartPolicy {
  /** @param {{ burst?: number, windowMs?: number, cooldownMs?: number, now?: () => number }} [options] */
  constructor({ burst = 5, windowMs = 60_000, cooldownMs = 30_000, now = () => Date.now() } = {}) {
    this.burst = burst;
    this.windowMs = windowMs;
    this.cooldownMs = cooldownMs;
    this.now = now;
    /** @type {number[]} */
    this.failures = [];
  }

  /** Records a failure; returns how long to wait before reloading (0 = now). */
  onFailure() {
    const t = this.now();
    this.failures = this.failures.filter((f) => t - f < this.windowMs);
    this.failures.push(t);
    return this.failures.length > this.burst ? this.cooldownMs : 0;
  }
}
