import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, runMosquitto } from './mosquitto.ts';

export interface TlsMosquitto {
  url: string;
  /** The CA (PEM) that signed the broker's certificate. */
  ca: Buffer;
  close(): Promise<void>;
}

/**
 * A Mosquitto of our own that speaks only TLS (mqtts://) on a free loopback port, with a
 * certificate for 127.0.0.1 signed by a CA made for the test (openssl).
 */
export async function startTlsMosquitto(): Promise<TlsMosquitto> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-tls-broker-'));
  const file = (name: string) => path.join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  execFileSync('openssl', ['req', '-x509', ...ec, '-days', '2', '-subj', '/CN=authface-test-ca', '-keyout', file('ca.key'), '-out', file('ca.crt')], { stdio: 'ignore' });
  execFileSync('openssl', ['req', ...ec, '-subj', '/CN=127.0.0.1', '-keyout', file('server.key'), '-out', file('server.csr')], { stdio: 'ignore' });
  fs.writeFileSync(file('san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  execFileSync('openssl', ['x509', '-req', '-in', file('server.csr'), '-CA', file('ca.crt'), '-CAkey', file('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', file('san.ext'), '-out', file('server.crt')], {
    stdio: 'ignore',
  });
  const port = await freePort();
  const conf = [
    'persistence false',
    'log_dest stderr',
    ...(process.getuid?.() === 0 ? ['user root'] : []),
    `listener ${port} 127.0.0.1`,
    `cafile ${file('ca.crt')}`,
    `certfile ${file('server.crt')}`,
    `keyfile ${file('server.key')}`,
    'allow_anonymous true',
  ];
  const ca = fs.readFileSync(file('ca.crt'));
  const close = await runMosquitto(dir, port, `${conf.join('\n')}\n`);
  return { url: `mqtts://127.0.0.1:${port}`, ca, close };
}
