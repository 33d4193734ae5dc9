// @ts-check
/**
 * The page behind biometry_url: opens the session, captures, completes, then sends the browser
 * to redirect_url?client_state=… (or back to the door kiosk when the kiosk opened this session).
 */
import { $, CAMERA_PROBLEMS, applyStrings, call, current, explain, fitOval, loadStrings, problem, runCapture, show, startCamera, state, stopCamera, tr } from './capture-core.js';

/** @typedef {import('./capture-core.js').SessionView} SessionView */

const params = new URLSearchParams(location.search);
current.token = params.get('t') ?? '';
/** Set when a door kiosk opened this session: come back to it instead of leaving the device. */
const kioskDoor = params.get('kiosk');

/** @param {string} url */
function leave(url) {
  state.finished = true;
  stopCamera();
  document.body.dataset.status = 'finished';
  show('done');
  const target = kioskDoor ? `/kiosk?door=${encodeURIComponent(kioskDoor)}` : url;
  setTimeout(() => location.replace(target), 700);
}

async function begin() {
  show('loading');
  /** @type {SessionView} */
  let view;
  try {
    view = await call('GET', '/capture/v1/session');
  } catch (err) {
    if (!explain(err, () => void begin())) problem('network', () => void begin());
    return;
  }
  /** @type {HTMLElement} */ ($('[data-action="cancel"]')).hidden = false;
  const title = /** @type {HTMLElement} */ (document.querySelector('[data-screen="intro"] h1'));
  title.textContent = tr(`intro.title.${view.flow}`) !== `intro.title.${view.flow}` ? tr(`intro.title.${view.flow}`) : tr('intro.title');
  show('intro');
  /** @type {HTMLButtonElement} */ ($('[data-action="start"]')).onclick = async () => {
    try {
      await startCamera();
      await runCapture(view);
      const result = await call('POST', '/capture/v1/complete');
      leave(result.redirect_to);
    } catch (err) {
      if (explain(err, () => void begin())) return;
      const kind = /** @type {Error} */ (err).message;
      if (CAMERA_PROBLEMS.includes(kind)) {
        problem(/** @type {any} */ (kind), kind === 'insecure' || kind === 'unsupported' ? null : () => void begin());
      } else {
        problem('network', () => void begin());
      }
    }
  };
}

async function cancel() {
  try {
    const result = await call('POST', '/capture/v1/cancel');
    leave(result.redirect_to);
  } catch (err) {
    explain(err, () => void begin());
  }
}

async function main() {
  await loadStrings();
  applyStrings();
  $('[data-action="cancel"]').addEventListener('click', () => void cancel());
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !state.finished && !$('[data-action="cancel"]').hidden) void cancel();
  });
  window.addEventListener('resize', fitOval);
  window.addEventListener('offline', () => {
    if (!state.finished && document.body.dataset.view === 'capture') problem('network', () => void begin());
  });
  if (!window.isSecureContext) return problem('insecure');
  if (!current.token) return problem('invalid');
  await begin();
}

void main();
