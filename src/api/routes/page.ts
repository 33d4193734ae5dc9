import Router from '@koa/router';

/**
 * GET /capture?t=<token>: the page behind biometry_url. It only ships static content; the token
 * stays in the page's address and goes to the capture API as a bearer token, never to another site.
 */
export function capturePageRoutes(): Router {
  const router = new Router();
  router.get('/capture', (ctx) => {
    ctx.set('Content-Security-Policy', "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
    ctx.type = 'html';
    ctx.body = PLACEHOLDER;
  });
  return router;
}

const PLACEHOLDER = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Auth Face</title></head>
<body style="font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem">
<h1>Face capture</h1>
<p>This link opens a face capture session. The guided camera page is not part of this build yet:
capture apps use the capture API (<code>/capture/v1</code>) with this link's token.</p>
</body></html>`;
