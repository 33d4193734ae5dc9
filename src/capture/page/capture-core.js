// @ts-check
/**
 * The capture core shared by the page behind biometry_url (capture.js) and the door kiosk
 * (kiosk.js). It guides the person with @vladmandic/human running in the browser, sends frames to
 * the capture API only while the guide says they are usable (at a bounded rate) and runs the
 * active-liveness challenge the server drew. Every decision is the server's; the browser only
 * collects frames. Nothing is stored in the browser.
 */

/** @typedef {{ steps: string[], colors: string[], color_ms: number, step_ms: number }} Challenge */
/** @typedef {{ flow: string, liveness: { mode: 'passive' | 'active', challenge: Challenge | null }, frames: { required: number } }} SessionView */
/**
 * @typedef {{ accepted: boolean, problems: string[], progress: { accepted_frames: number, required_frames: number },
 *   liveness: { steps_done: number, steps_total: number, light_phases_seen: number, failed: boolean } }} Feedback
 */
/** @typedef {{ faces: number, width: number, cx: number, cy: number, yaw: number, pitch: number, eyes: number, light: number }} Look */

/** The capture token of the session being captured (the `t` of biometry_url). */
export const current = { token: '' };
const MIN_FRAME_GAP_MS = 400; // frames are sent at most ~2.5 per second, one at a time
const STEP_FRAME_GAP_MS = 250; // a little faster while a movement is being made
const LIGHT_SETTLE_MS = 250; // the camera's exposure follows a new screen colour after a moment
const FRONTAL_BUDGET_MS = 45_000; // how long the page keeps trying to get usable frames

/** @type {Record<string, string>} */
let strings = {};
/** @type {MediaStream | null} */
let stream = null;
/** @type {any} */
let human = null;
let busy = false;
let lastSent = 0;
/** Set once the page has handed over to the next page: no screen changes after that. */
export const state = { finished: false };

export const $ = (/** @type {string} */ sel) => /** @type {HTMLElement} */ (document.querySelector(sel));
const video = /** @type {HTMLVideoElement} */ ($('#video'));
export const sleep = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- text

export async function loadStrings() {
  const wanted = (navigator.language || 'en').slice(0, 2).toLowerCase();
  for (const lang of [...new Set([wanted, 'en'])]) {
    try {
      const res = await fetch(`/capture/assets/locales/${lang}.json`);
      if (res.ok) {
        strings = await res.json();
        document.documentElement.lang = lang;
        return;
      }
    } catch {
      // try the next language
    }
  }
}

/** @param {string} key @param {Record<string, string | number>} [vars] */
export function tr(key, vars = {}) {
  let text = strings[key] ?? key;
  for (const [k, v] of Object.entries(vars)) text = text.replace(`{${k}}`, String(v));
  return text;
}

export function applyStrings() {
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = tr(/** @type {HTMLElement} */ (el).dataset.i18n ?? '');
  for (const el of document.querySelectorAll('[data-i18n-label]')) el.setAttribute('aria-label', tr(/** @type {HTMLElement} */ (el).dataset.i18nLabel ?? ''));
  document.title = tr('brand');
}

// ---------------------------------------------------------------- screens

/** @param {string} name */
export function show(name) {
  for (const s of document.querySelectorAll('section[data-screen]')) /** @type {HTMLElement} */ (s).hidden = /** @type {HTMLElement} */ (s).dataset.screen !== name;
  document.body.dataset.view = name; // for tests and styling
  $('#app').setAttribute('aria-busy', String(name === 'loading'));
  // keep keyboard users on the screen they are looking at
  const target = /** @type {HTMLElement | null} */ (document.querySelector(`[data-screen="${name}"] button:not([hidden]), [data-screen="${name}"] h1`));
  if (target) {
    if (target.tagName === 'H1') target.tabIndex = -1;
    target.focus({ preventScroll: true });
  }
  if (name === 'capture') fitOval();
}

/** A face-shaped oval (taller than wide) whatever the stage's shape. */
export function fitOval() {
  const stage = $('.stage');
  const { width, height } = stage.getBoundingClientRect();
  if (!width || !height) return;
  const ovalHeight = 0.68 * height;
  const ovalWidth = Math.min(0.74 * ovalHeight, 0.8 * width);
  for (const el of stage.querySelectorAll('ellipse')) {
    el.setAttribute('rx', String((50 * ovalWidth) / width));
    el.setAttribute('ry', String((50 * ovalHeight) / height));
  }
}

/** @param {string} text */
export function instruct(text) {
  const el = $('#instruction');
  if (el.textContent !== text) el.textContent = text;
}

/** @param {number} fraction */
export function setProgress(fraction) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  /** @type {HTMLElement} */ ($('.progress .bar')).style.width = `${pct}%`;
  $('.progress').setAttribute('aria-valuenow', String(pct));
}

/**
 * A screen that explains what went wrong and, when it can help, offers to try again.
 * @param {'permission' | 'no_camera' | 'camera_busy' | 'insecure' | 'expired' | 'used' | 'invalid' | 'network' | 'unsupported' | 'busy' | 'unknown_door' | 'out_of_service'} kind
 * @param {(() => void) | null} [retry]
 * @param {Record<string, string>} [vars] values for the texts' {placeholders}
 */
export function problem(kind, retry = null, vars = {}) {
  stopCamera();
  hideLight();
  $('#problem-title').textContent = tr(`problem.${kind}.title`, vars);
  $('#problem-body').textContent = tr(`problem.${kind}.body`, vars);
  const button = /** @type {HTMLButtonElement} */ ($('[data-action="retry"]'));
  button.hidden = !retry;
  button.onclick = retry;
  // a dead link cannot be cancelled any more
  /** @type {HTMLElement} */ ($('[data-action="cancel"]')).hidden = ['expired', 'used', 'invalid', 'unknown_door', 'out_of_service'].includes(kind);
  document.body.dataset.problem = kind;
  show('problem');
}

// ---------------------------------------------------------------- capture API

export class HttpError extends Error {
  /** @param {number} status @param {string} code */
  constructor(status, code) {
    super(code);
    this.status = status;
    this.code = code;
  }
}
export class NetworkError extends Error {}

/**
 * @param {string} method @param {string} path @param {Blob | string} [body] @param {Record<string, string>} [headers]
 * @returns {Promise<any>}
 */
export async function call(method, path, body, headers = {}) {
  let res;
  try {
    res = await fetch(path, { method, body, headers: { authorization: `Bearer ${current.token}`, ...headers }, cache: 'no-store', referrerPolicy: 'no-referrer' });
  } catch {
    throw new NetworkError('network');
  }
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new HttpError(res.status, json?.error?.code ?? 'error');
  return json;
}

/**
 * Shows the screen for a failed call; returns true when it was one it knows.
 * @param {unknown} err @param {() => void} retry
 */
export function explain(err, retry) {
  if (err instanceof NetworkError) problem('network', retry);
  else if (err instanceof HttpError && err.code === 'capture_link_expired') problem('expired');
  else if (err instanceof HttpError && err.status === 410) problem('used');
  else if (err instanceof HttpError && err.status === 401) problem('invalid');
  else if (err instanceof HttpError && err.status === 503) problem('busy', retry);
  else return false;
  return true;
}

// ---------------------------------------------------------------- camera and face guide

export async function startCamera() {
  if (!window.isSecureContext) throw new Error('insecure');
  if (!navigator.mediaDevices?.getUserMedia) throw new Error('unsupported');
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'user', width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
  } catch (e) {
    const name = /** @type {{ name?: string }} */ (e).name ?? '';
    if (name === 'NotAllowedError' || name === 'SecurityError' || name === 'PermissionDeniedError') throw new Error('permission');
    if (name === 'NotFoundError' || name === 'OverconstrainedError' || name === 'DevicesNotFoundError') throw new Error('no_camera');
    throw new Error('camera_busy');
  }
  stream.getVideoTracks()[0]?.addEventListener('ended', () => {
    if (!state.finished) problem('no_camera', () => location.reload());
  });
  video.srcObject = stream;
  await video.play();
  while (video.videoWidth === 0) await sleep(50);
}

export function stopCamera() {
  for (const track of stream?.getTracks() ?? []) track.stop();
  stream = null;
}

export async function loadHuman() {
  if (human) return;
  instruct(tr('loading.models'));
  const bundle = '/capture/assets/human.esm.js'; // a path, not a module TypeScript should resolve
  const { Human } = await import(bundle);
  const webgl = !!document.createElement('canvas').getContext('webgl2');
  human = new Human({
    backend: webgl ? 'webgl' : 'wasm',
    wasmPath: '/capture/assets/wasm/',
    modelBasePath: '/capture/assets/models/',
    cacheModels: false,
    debug: false,
    face: {
      enabled: true,
      detector: { rotation: false, maxDetected: 3, minConfidence: 0.3, return: false },
      mesh: { enabled: true },
      iris: { enabled: false },
      description: { enabled: false },
      emotion: { enabled: false },
      antispoof: { enabled: false },
      liveness: { enabled: false },
      attention: { enabled: false },
    },
    body: { enabled: false },
    hand: { enabled: false },
    object: { enabled: false },
    gesture: { enabled: false },
    segmentation: { enabled: false },
    filter: { enabled: false },
  });
  await human.load();
}

const probe = document.createElement('canvas');
probe.width = 24;
probe.height = 24;
const probeCtx = /** @type {CanvasRenderingContext2D} */ (probe.getContext('2d', { willReadFrequently: true }));

/**
 * What the guide sees in the current video frame, in the person's terms (as the server measures
 * it): positive yaw = turned to their left, positive pitch = looking up.
 * @returns {Promise<Look>}
 */
export async function look() {
  const result = await human.detect(video);
  const faces = result.face.filter((/** @type {any} */ f) => f.boxScore >= 0.5);
  const face = faces.sort((/** @type {any} */ a, /** @type {any} */ b) => b.box[2] - a.box[2])[0];
  if (!face) return { faces: 0, width: 0, cx: 0, cy: 0, yaw: 0, pitch: 0, eyes: 0, light: 0 };
  const [x, y, w, h] = face.box;
  const vw = video.videoWidth;
  const vh = video.videoHeight;
  probeCtx.drawImage(video, x + w * 0.25, y + h * 0.3, w * 0.5, h * 0.45, 0, 0, 24, 24);
  const px = probeCtx.getImageData(0, 0, 24, 24).data;
  let light = 0;
  for (let i = 0; i < px.length; i += 4) light += 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
  const m = face.mesh;
  const ratio = (/** @type {number} */ up, /** @type {number} */ down, /** @type {number} */ a, /** @type {number} */ b) =>
    Math.hypot(m[up][0] - m[down][0], m[up][1] - m[down][1]) / (Math.hypot(m[a][0] - m[b][0], m[a][1] - m[b][1]) || 1);
  const angle = face.rotation?.angle ?? { yaw: 0, pitch: 0 };
  return {
    faces: faces.length,
    width: w / vw,
    cx: (x + w / 2) / vw,
    cy: (y + h / 2) / vh,
    yaw: (-angle.yaw * 180) / Math.PI,
    pitch: (-angle.pitch * 180) / Math.PI,
    eyes: m?.length > 400 ? Math.max(ratio(159, 145, 133, 33), ratio(386, 374, 362, 263)) : 1,
    light: light / (px.length / 4),
  };
}

/**
 * The guide's advice for this frame, or null when it is usable.
 * @param {Look} l @param {boolean} frontal
 */
export function advice(l, frontal) {
  if (l.faces === 0) return 'guide.no_face';
  if (l.faces > 1) return 'guide.many_faces';
  if (l.width < 0.2) return 'guide.too_far';
  if (l.width > 0.68) return 'guide.too_close';
  if (Math.abs(l.cx - 0.5) > 0.2 || Math.abs(l.cy - 0.47) > 0.22) return 'guide.center';
  if (l.light < 45) return 'guide.dark';
  if (l.light > 220) return 'guide.bright';
  if (frontal && (Math.abs(l.yaw) > 15 || Math.abs(l.pitch) > 15)) return 'guide.look';
  return null;
}

/** @param {'ok' | 'warn' | ''} state */
export function guideState(state) {
  const guide = $('.guide');
  guide.classList.toggle('ok', state === 'ok');
  guide.classList.toggle('warn', state === 'warn');
}

// ---------------------------------------------------------------- frames

const shot = document.createElement('canvas');

/** The camera's current frame as a JPEG, as the camera sees it (not mirrored). @returns {Promise<Blob>} */
function snapshot() {
  shot.width = video.videoWidth;
  shot.height = video.videoHeight;
  /** @type {CanvasRenderingContext2D} */ (shot.getContext('2d')).drawImage(video, 0, 0);
  return new Promise((resolve, reject) => shot.toBlob((b) => (b ? resolve(b) : reject(new Error('snapshot'))), 'image/jpeg', 0.9));
}

export class OutOfFrames extends Error {}

/** @param {number} [lightPhase] @returns {Promise<Feedback>} */
async function sendFrame(lightPhase) {
  busy = true;
  try {
    const headers = { 'content-type': 'image/jpeg', ...(lightPhase === undefined ? {} : { 'x-light-phase': String(lightPhase) }) };
    return await call('POST', '/capture/v1/frames', await snapshot(), headers);
  } catch (err) {
    // the session's frame allowance is spent: let the server decide with what it has
    if (err instanceof HttpError && err.status === 429) throw new OutOfFrames();
    throw err;
  } finally {
    busy = false;
    lastSent = performance.now();
  }
}

/** Server feedback worth telling the person about. @param {Feedback} fb */
function serverAdvice(fb) {
  const p = fb.problems.find((x) => strings[`guide.server.${x}`]);
  return p ? tr(`guide.server.${p}`) : null;
}

// ---------------------------------------------------------------- the capture itself

/**
 * Sends usable frontal frames until the server has accepted `needed` of them, or gives up after
 * FRONTAL_BUDGET_MS (the server then fails the session with what the frames showed).
 * @param {number} needed @param {(fb: Feedback) => void} onFeedback
 */
export async function collectFrontal(needed, onFeedback) {
  let accepted = 0;
  let hint = /** @type {string | null} */ (null);
  const until = performance.now() + FRONTAL_BUDGET_MS;
  while (accepted < needed && performance.now() < until) {
    const l = await look();
    const key = advice(l, true);
    guideState(key ? 'warn' : 'ok');
    instruct(hint ?? tr(key ?? 'guide.hold'));
    if (!key && !busy && performance.now() - lastSent > MIN_FRAME_GAP_MS) {
      const fb = await sendFrame();
      accepted = fb.progress.accepted_frames;
      hint = fb.accepted ? null : serverAdvice(fb);
      onFeedback(fb);
      if (fb.liveness.failed) return;
    }
    await sleep(60);
  }
}

/** @param {string} step @param {Look} l */
function showsMovement(step, l) {
  if (step === 'turn_left') return l.yaw >= 20;
  if (step === 'turn_right') return l.yaw <= -20;
  if (step === 'look_up') return l.pitch >= 14;
  return l.eyes < 0.13;
}

/**
 * The head movements, in the order drawn; true when every one was made.
 * @param {Challenge} c @param {(fb: Feedback) => void} onFeedback @returns {Promise<boolean>}
 */
export async function movements(c, onFeedback) {
  const badge = $('.step-badge');
  for (let i = 0; i < c.steps.length; i++) {
    badge.hidden = false;
    badge.textContent = tr('step.counter', { n: i + 1, total: c.steps.length });
    instruct(tr(`step.${c.steps[i]}`));
    const until = performance.now() + c.step_ms + 1000;
    let done = false;
    while (!done && performance.now() < until) {
      const l = await look();
      guideState(l.faces === 1 ? 'ok' : 'warn');
      const moving = l.faces === 1 && showsMovement(c.steps[i], l);
      const gap = moving ? STEP_FRAME_GAP_MS : MIN_FRAME_GAP_MS * 2;
      if (l.faces === 1 && !busy && performance.now() - lastSent > gap) {
        const fb = await sendFrame();
        onFeedback(fb);
        if (fb.liveness.failed) return false;
        done = fb.liveness.steps_done > i;
      }
      await sleep(40);
    }
    if (!done) return false; // out of time: the challenge cannot pass any more
    if (i < c.steps.length - 1) {
      instruct(tr('step.back'));
      await sleep(500);
    }
  }
  badge.hidden = true;
  return true;
}

const lightEl = $('#light');
export function hideLight() {
  lightEl.hidden = true;
}

/** The screen-light challenge: one frame per colour, each tagged with its phase. @param {Challenge} c @param {(fb: Feedback) => void} onFeedback */
export async function screenLight(c, onFeedback) {
  instruct(tr('light.text'));
  lightEl.textContent = tr('light.text');
  await sleep(800);
  lightEl.hidden = false;
  try {
    for (let phase = 0; phase < c.colors.length; phase++) {
      const started = performance.now();
      lightEl.style.background = c.colors[phase];
      await sleep(LIGHT_SETTLE_MS);
      const fb = await sendFrame(phase);
      onFeedback(fb);
      if (fb.liveness.failed) return;
      await sleep(Math.max(0, c.color_ms - (performance.now() - started)));
    }
  } finally {
    hideLight();
  }
}

/**
 * Runs the capture of one session: frontal frames, then (active mode) the drawn movements and the
 * screen-light sequence, then frontal frames until the server has enough. The caller completes.
 * @param {SessionView} view
 */
export async function runCapture(view) {
  show('capture');
  guideState('');
  await loadHuman();
  setProgress(0);
  const required = view.frames.required;
  const c = view.liveness.mode === 'active' ? view.liveness.challenge : null;
  const total = required + (c ? c.steps.length + c.colors.length : 0);
  // once the server says liveness has failed for good, nothing more is asked of the person
  let failed = false;
  const onFeedback = (/** @type {Feedback} */ fb) => {
    failed ||= fb.liveness.failed;
    setProgress((Math.min(fb.progress.accepted_frames, required) + fb.liveness.steps_done + fb.liveness.light_phases_seen) / total);
  };
  try {
    if (c) {
      await collectFrontal(1, onFeedback);
      if (!failed && !(await movements(c, onFeedback))) failed = true;
      if (!failed) await screenLight(c, onFeedback);
    }
    if (!failed) await collectFrontal(required, onFeedback);
  } catch (err) {
    if (!(err instanceof OutOfFrames)) throw err;
  } finally {
    resetProgress();
  }
  instruct(tr('checking'));
}

/** No step badge, an empty progress bar: the state of a screen before any capture. */
export function resetProgress() {
  /** @type {HTMLElement} */ ($('.step-badge')).hidden = true;
  setProgress(0);
}

/** The camera problems startCamera reports, by the kind of screen they need. */
export const CAMERA_PROBLEMS = ['permission', 'no_camera', 'camera_busy', 'insecure', 'unsupported'];
