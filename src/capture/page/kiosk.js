// @ts-check
/**
 * The door kiosk (access mode): the camera stays on; when a face comes close the kiosk opens an
 * identify session for its door, runs the same guided capture and liveness as the capture page,
 * and shows the door's decision (which arrives from the server as an event) before going back to
 * idle. The same face is not processed again until it has left or the cool-down has passed.
 * Enrolment sessions pushed to this door (local API or MQTT) open the capture page on this screen.
 */
import { $, CAMERA_PROBLEMS, HttpError, applyStrings, call, current, fitOval, guideState, instruct, loadHuman, loadStrings, look, problem, resetProgress, runCapture, show, sleep, startCamera, tr } from './capture-core.js';

/** @typedef {{ id: string, name: string, liveness: string, factor: 'face' | 'face+pin', cooldown_seconds: number, result_seconds: number, out_of_service: { reason: string, since: string } | null }} Door */
/** @typedef {{ client_state: string | null, result: 'granted' | 'denied', reason: string | null, factor: string | null }} Access */

const doorId = new URLSearchParams(location.search).get('door') ?? '';
const APPROACH_WIDTH = 0.18; // a face this wide (share of the frame) is someone at the door
const GONE_MS = 1200; // no face for this long: the person has left
const PIN_ENTRY_MS = 20_000; // a PIN pad left alone this long goes back to idle

/** @type {Map<string, Access>} */
const decisions = new Map();

/** @param {number} ms */
function clock(ms = 0) {
  $('#clock').textContent = new Date(Date.now() + ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function listen() {
  const events = new EventSource(`/kiosk/v1/doors/${encodeURIComponent(doorId)}/events`);
  events.addEventListener('access', (e) => {
    const a = /** @type {Access} */ (JSON.parse(/** @type {MessageEvent} */ (e).data));
    if (a.client_state) decisions.set(a.client_state, a);
  });
  // an integrator's enrolment session sent to this door: run it here, then come back
  events.addEventListener('session', (e) => {
    const { path } = JSON.parse(/** @type {MessageEvent} */ (e).data);
    location.assign(`${path}&kiosk=${encodeURIComponent(doorId)}`);
  });
  // the hub revoked the device: the screen says so at once, and nothing more happens here
  events.addEventListener('out_of_service', () => location.reload());
}

/** Waits until someone is at the door. */
async function approach() {
  show('capture');
  resetProgress(); // nothing of the last person's capture stays on screen
  guideState('');
  instruct(tr('kiosk.idle'));
  for (;;) {
    const l = await look();
    if (l.faces === 1 && l.width >= APPROACH_WIDTH) return;
    await sleep(150);
  }
}

/** After a decision: wait until the face has gone, or the cool-down has passed. @param {Door} door */
async function settle(door) {
  const until = performance.now() + door.cooldown_seconds * 1000;
  let lastSeen = performance.now();
  while (performance.now() < until) {
    if ((await look()).faces > 0) lastSeen = performance.now();
    else if (performance.now() - lastSeen > GONE_MS) return;
    await sleep(200);
  }
}

/** @param {string} clientState @returns {Promise<Access | null>} */
async function decision(clientState) {
  for (let i = 0; i < 40; i++) {
    const d = decisions.get(clientState);
    if (d) {
      decisions.delete(clientState);
      return d;
    }
    await sleep(75);
  }
  return null; // the same person within the cool-down: nothing to show
}

/**
 * The PIN pad of a face+pin door: digits by touch or keyboard, OK or Enter to go on. Resolves
 * with the PIN, or null when left alone. The PIN is sent to the device only, in a request body.
 * @returns {Promise<string | null>}
 */
function askPin() {
  const form = /** @type {HTMLFormElement} */ ($('#pin-form'));
  const input = /** @type {HTMLInputElement} */ ($('#pin-input'));
  input.value = '';
  show('pin');
  input.focus();
  return new Promise((resolve) => {
    let timer = setTimeout(() => finish(null), PIN_ENTRY_MS);
    /** @param {Event} e */
    const onKey = (e) => {
      const key = /** @type {HTMLElement} */ (e.target).closest('button');
      if (!key || key.type === 'submit') return;
      if (key.dataset.digit && input.value.length < 8) input.value += key.dataset.digit;
      if (key.dataset.key === 'erase') input.value = input.value.slice(0, -1);
      input.focus();
    };
    /** @param {Event} e */
    const onSubmit = (e) => {
      e.preventDefault();
      if (/^\d{4,8}$/.test(input.value)) finish(input.value);
    };
    const onInput = () => {
      input.value = input.value.replace(/\D/g, '').slice(0, 8);
      clearTimeout(timer);
      timer = setTimeout(() => finish(null), PIN_ENTRY_MS);
    };
    /** @param {string | null} pin */
    function finish(pin) {
      clearTimeout(timer);
      form.removeEventListener('click', onKey);
      form.removeEventListener('submit', onSubmit);
      input.removeEventListener('input', onInput);
      input.value = ''; // nothing of the PIN stays on the page
      resolve(pin);
    }
    form.addEventListener('click', onKey);
    form.addEventListener('submit', onSubmit);
    input.addEventListener('input', onInput);
  });
}

/** Opens the door's identify session, with the PIN at a face+pin door. @param {Door} door @param {string | undefined} pin */
function startSession(door, pin) {
  const path = `/kiosk/v1/doors/${encodeURIComponent(door.id)}/sessions`;
  return pin === undefined ? call('POST', path) : call('POST', path, JSON.stringify({ pin }), { 'content-type': 'application/json' });
}

/** @param {Access} a @param {Door} door */
async function showResult(a, door) {
  const granted = a.result === 'granted';
  document.body.dataset.result = a.result;
  $('#result-mark').className = `illustration ${granted ? 'check' : 'warn'}`;
  $('#result-title').textContent = tr(granted ? 'kiosk.granted' : 'kiosk.denied');
  const reason = a.reason && tr(`kiosk.reason.${a.reason}`) !== `kiosk.reason.${a.reason}` ? tr(`kiosk.reason.${a.reason}`) : granted ? tr('kiosk.granted.body') : tr('kiosk.reason.other');
  $('#result-body').textContent = reason;
  const factor = $('#result-factor');
  factor.hidden = !(granted && a.factor);
  factor.textContent = granted && a.factor ? tr(`kiosk.factor.${a.factor}`) : '';
  show('result');
  await sleep(door.result_seconds * 1000);
  delete document.body.dataset.result;
}

/** @param {Door} door */
async function serve(door) {
  for (;;) {
    await approach();
    const pin = door.factor === 'face+pin' ? await askPin() : undefined;
    if (pin === null) continue;
    let session;
    try {
      session = await startSession(door, pin);
    } catch (err) {
      if (!(err instanceof HttpError && err.code === 'pin_locked')) throw err;
      await showResult({ client_state: null, result: 'denied', reason: 'pin_locked', factor: door.factor }, door);
      continue;
    }
    current.token = session.token;
    const view = await call('GET', '/capture/v1/session');
    await runCapture(view);
    await call('POST', '/capture/v1/complete');
    const d = await decision(session.client_state);
    if (d) await showResult(d, door);
    await settle(door);
  }
}

async function main() {
  await loadStrings();
  applyStrings();
  clock();
  setInterval(clock, 10_000);
  window.addEventListener('resize', fitOval);
  if (!doorId) return problem('unknown_door', null, { door: '?' });
  /** @type {Door} */
  let door;
  try {
    door = await call('GET', `/kiosk/v1/doors/${encodeURIComponent(doorId)}`);
  } catch (err) {
    if (err instanceof HttpError && err.code === 'door_not_found') return problem('unknown_door', null, { door: doorId });
    return problem('network', () => location.reload());
  }
  $('#door-name').textContent = door.name;
  document.title = door.name;
  if (door.out_of_service) return problem('out_of_service', null, { door: door.name });
  listen();
  for (;;) {
    try {
      await startCamera();
      await loadHuman();
      await serve(door);
    } catch (err) {
      if (err instanceof HttpError && err.code === 'device_revoked') return location.reload();
      const kind = /** @type {Error} */ (err).message;
      problem(/** @type {any} */ (CAMERA_PROBLEMS.includes(kind) ? kind : 'network'));
      await sleep(5000); // a door screen retries on its own
    }
  }
}

void main();
