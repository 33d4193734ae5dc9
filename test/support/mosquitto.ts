import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from './datasets.ts';

/** A free TCP port on the loopback interface. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

export interface OwnMosquitto {
  url: string;
  port: number;
  dir: string;
  close(): Promise<void>;
}

/**
 * A Mosquitto of our own on a free port (the shared one on 1883 is left as it is), configured by
 * firmware-config/mosquitto: authenticated users from a password file, the ACL file as shipped,
 * client ids bound to user names, the packet size limit. TLS is left out (plain loopback).
 */
export async function startMosquitto(users: Record<string, string>): Promise<OwnMosquitto> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-mosquitto-'));
  const port = await freePort();
  const passwd = path.join(dir, 'passwd');
  for (const [name, password] of Object.entries(users)) {
    execFileSync('mosquitto_passwd', [...(fs.existsSync(passwd) ? [] : ['-c']), '-b', passwd, name, password]);
  }
  fs.copyFileSync(path.join(ROOT, 'firmware-config', 'mosquitto', 'authface.acl'), path.join(dir, 'acl'));
  const shipped = fs.readFileSync(path.join(ROOT, 'firmware-config', 'mosquitto', 'authface.conf'), 'utf8');
  const conf = shipped
    .split('\n')
    .filter((l) => !/^(certfile|keyfile|tls_version)\b/.test(l))
    .map((l) =>
      l
        .replace(/^listener .*/, `listener ${port} 127.0.0.1`)
        .replace(/^password_file .*/, `password_file ${passwd}`)
        .replace(/^acl_file .*/, `acl_file ${path.join(dir, 'acl')}`),
    )
    .join('\n');
  fs.chmodSync(passwd, 0o600);
  // global options go before the listener: put ours first
  const stop = await runMosquitto(dir, port, `persistence false\nlog_dest stderr\n${process.getuid?.() === 0 ? 'user root\n' : ''}${conf}\n`);
  return { url: `mqtt://127.0.0.1:${port}`, port, dir, close: stop };
}

/**
 * Runs Mosquitto with `conf` (written to `dir`) until it listens on `port`; the function it returns
 * stops it and removes `dir`.
 */
export async function runMosquitto(dir: string, port: number, conf: string): Promise<() => Promise<void>> {
  fs.writeFileSync(path.join(dir, 'mosquitto.conf'), conf);
  const child: ChildProcess = spawn('mosquitto', ['-c', path.join(dir, 'mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr?.on('data', (d) => (log += d));
  for (let i = 0; ; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(!!s.end()));
      s.on('error', () => resolve(false));
    });
    if (up) break;
    if (i > 100 || child.exitCode !== null) throw new Error(`mosquitto did not start:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return async () => {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  };
}

/**
 * A Mosquitto of our own with the dynamic security plugin Debian ships, set up with one admin
 * client (`mosquitto_ctrl dynsec init`) as the README's fleet quick start does it: the shipped
 * firmware-config/mosquitto/dynsec.conf, with its file and port moved here. The hub administers
 * the broker as that user.
 */
export async function startDynsecMosquitto(admin: { username: string; password: string }): Promise<OwnMosquitto> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-dynsec-'));
  const port = await freePort();
  const config = path.join(dir, 'dynsec.json');
  execFileSync('mosquitto_ctrl', ['dynsec', 'init', config, admin.username, admin.password], { stdio: 'ignore' });
  const shipped = fs.readFileSync(path.join(ROOT, 'firmware-config', 'mosquitto', 'dynsec.conf'), 'utf8');
  const moved = shipped.replace(/^plugin_opt_config_file .*$/m, `plugin_opt_config_file ${config}`).replace(/^listener .*$/m, `listener ${port} 127.0.0.1`);
  assert.ok(moved.includes(config) && moved.includes(`listener ${port}`), 'dynsec.conf names its config file and listener');
  const conf = ['persistence false', 'log_dest stderr', ...(process.getuid?.() === 0 ? ['user root'] : []), moved];
  const close = await runMosquitto(dir, port, `${conf.join('\n')}\n`);
  return { url: `mqtt://127.0.0.1:${port}`, port, dir, close };
}
