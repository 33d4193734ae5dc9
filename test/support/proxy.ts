import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A reverse proxy on this machine, as an operator puts one in front of the device for https:
 * every request reaches the service from 127.0.0.1. `forwardedFor` adds X-Forwarded-For and Via
 * as nginx and Caddy are usually configured to; without it, it forwards the request as it came.
 */
export async function startReverseProxy(target: string, opts: { forwardedFor: boolean }): Promise<{ url: string; close(): Promise<void> }> {
  const upstream = new URL(target);
  const server = http.createServer((req, res) => {
    const headers = { ...req.headers, host: upstream.host };
    if (opts.forwardedFor) Object.assign(headers, { 'x-forwarded-for': req.socket.remoteAddress ?? '', via: '1.1 test-proxy' });
    const out = http.request({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    out.on('error', () => res.writeHead(502).end());
    req.pipe(out);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise((r) => server.close(() => r())),
  };
}
