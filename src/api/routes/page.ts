import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Router from '@koa/router';
import type { Context } from 'koa';
import { MODELS_DIR } from '../../biometrics/models.ts';
import { packageDir } from '../../biometrics/runtime.ts';
import { ServiceError } from '../../errors.ts';

/** The page's own files live in the source tree (src/capture/page), from src/ or dist/ alike. */
export const PAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src', 'capture', 'page');

const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.bin': 'application/octet-stream',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
};

/**
 * Every file the capture page may load, self-hosted: its script, style and locale files, Human's
 * browser bundle, the two guidance models (the checksummed copies in models/) and the WebAssembly
 * backend. A fixed map: no request path ever reaches the file system.
 */
function assetMap(): Map<string, string> {
  const human = packageDir('@vladmandic/human');
  const wasm = path.join(packageDir('@tensorflow/tfjs-backend-wasm'), 'dist');
  const assets = new Map<string, string>([
    ['capture-core.js', path.join(PAGE_DIR, 'capture-core.js')],
    ['capture.js', path.join(PAGE_DIR, 'capture.js')],
    ['kiosk.js', path.join(PAGE_DIR, 'kiosk.js')],
    ['capture.css', path.join(PAGE_DIR, 'capture.css')],
    ['human.esm.js', path.join(human, 'dist', 'human.esm.js')],
  ]);
  for (const f of fs.readdirSync(path.join(PAGE_DIR, 'locales'))) assets.set(`locales/${f}`, path.join(PAGE_DIR, 'locales', f));
  for (const m of ['blazeface', 'facemesh']) {
    for (const ext of ['json', 'bin']) assets.set(`models/${m}.${ext}`, path.join(MODELS_DIR, 'human', `${m}.${ext}`));
  }
  for (const f of ['tfjs-backend-wasm.wasm', 'tfjs-backend-wasm-simd.wasm', 'tfjs-backend-wasm-threaded-simd.wasm']) {
    assets.set(`wasm/${f}`, path.join(wasm, f));
  }
  return assets;
}

/**
 * The page's Content-Security-Policy: everything from this origin only, no inline script, and
 * WebAssembly compilation for the face model backend. The capture token never leaves the origin.
 */
export const CAPTURE_CSP = [
  "default-src 'none'",
  "script-src 'self' 'wasm-unsafe-eval'",
  "style-src 'self'",
  "img-src 'self' data: blob:",
  "media-src 'self' blob: mediastream:",
  "connect-src 'self'",
  "worker-src 'self' blob:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** A page of src/capture/page with its `<!-- include x.html -->` lines replaced by those partials. */
export function pageHtml(name: string): string {
  return fs
    .readFileSync(path.join(PAGE_DIR, name), 'utf8')
    .replace(/^\s*<!-- include ([\w.-]+\.html) -->\n/gm, (_m, part: string) => fs.readFileSync(path.join(PAGE_DIR, part), 'utf8').replace(/^<!--.*-->\n/, ''));
}

/** GET /capture?t=<token> (the page behind biometry_url) and GET /capture/assets/* (its files). */
export function capturePageRoutes(): Router {
  const router = new Router();
  const assets = assetMap();
  const html = pageHtml('index.html');

  router.get('/capture', (ctx: Context) => {
    ctx.set('Content-Security-Policy', CAPTURE_CSP);
    // the camera for this page only (everything else is served with camera=())
    ctx.set('Permissions-Policy', 'camera=(self), microphone=(), geolocation=(), interest-cohort=()');
    ctx.type = 'html';
    ctx.body = html;
  });

  router.get('/capture/assets/*file', (ctx: Context) => {
    const name = ([] as string[]).concat(ctx.params.file as unknown as string[] | string).join('/');
    const file = assets.get(name);
    if (!file) throw new ServiceError('not_found', 'asset_not_found', 'no such file');
    ctx.type = TYPES[path.extname(file)] ?? 'application/octet-stream';
    // assets carry no secret and change only with the installed version
    ctx.set('Cache-Control', 'public, max-age=3600');
    ctx.body = fs.createReadStream(file);
  });
  return router;
}
