import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { stringify } from 'yaml';
import { promisify } from 'node:util';
import { ROOT } from './datasets.ts';
import { freePort } from './mosquitto.ts';

export const run = promisify(execFile);
// tsx by its absolute address (its package's "." export): the CLI is also run from other working
// directories. Not import.meta.resolve: under tsx's hooks it leaves message ports open.
export const CLI = cliIn(ROOT);

/** The `authface` command from the sources of a checkout at `root` (this one, or an earlier release's). */
export function cliIn(root: string): string[] {
  return ['--import', pathToFileURL(path.join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href, path.join(root, 'src/cli/main.ts')];
}

/** Runs the `authface` command (from source) to its end. */
export function authface(args: string[], env: Record<string, string>, opts: { cwd?: string; cli?: string[] } = {}) {
  return run(process.execPath, [...(opts.cli ?? CLI), ...args], { cwd: opts.cwd ?? ROOT, env: { ...process.env, LOG_LEVEL: 'warn', ...env } });
}

/** Every `authface serve` started by a test: the run stops any a failing test left behind. */
export const servedChildren = new Set<ChildProcess>();

/** Starts `authface serve`, waits until it is ready and returns its URL and what it printed. */
export async function serve(env: Record<string, string>, opts: { cwd?: string; cli?: string[] } = {}): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  const child = spawn(process.execPath, [...(opts.cli ?? CLI), 'serve'], { cwd: opts.cwd ?? ROOT, env: { ...process.env, PORT: '0', LOG_LEVEL: 'info', ...env } });
  servedChildren.add(child);
  child.once('exit', () => servedChildren.delete(child));
  let output = '';
  child.stdout?.on('data', (d) => (output += d));
  child.stderr?.on('data', (d) => (output += d));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start:\n${output}`)), 60_000);
    child.stdout?.on('data', () => {
      const m = /"url":"(http:\/\/[^"]+)"/.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`serve exited with ${code}:\n${output}`));
    });
  });
  for (let i = 0; i < 120 && (await fetch(`${url}/readyz`)).status !== 200; i++) await new Promise((r) => setTimeout(r, 250));
  return { child, url, output: () => output };
}

/** Stops a served process with SIGTERM; resolves with its exit code. */
export async function stop(child: ChildProcess): Promise<number | null> {
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  child.kill('SIGTERM');
  return exited;
}

/** Starts `authface hub serve` and waits until it says it is ready. */
export async function serveHub(opts: { databaseUrl: string; brokerUrl: string; prefix: string }, env: Record<string, string>): Promise<ChildProcess & { url: string }> {
  // its own free port (two hubs may run side by side) and one engine worker each
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = spawn(process.execPath, [...CLI, 'hub', 'serve', '--database-url', opts.databaseUrl, '--broker-url', opts.brokerUrl, '--prefix', opts.prefix], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'info', HOST: '127.0.0.1', PORT: String(port), PUBLIC_URL: url, AUTHFACE_WORKERS: '1', AUTHFACE_HUB_BROKER_ACL: 'none', ...env },
  });
  servedChildren.add(child);
  child.once('exit', () => servedChildren.delete(child));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const seen = (d: Buffer) => {
      out += d;
      if (out.includes('hub ready')) resolve();
    };
    child.stdout?.on('data', seen);
    child.stderr?.on('data', seen);
    child.once('exit', (code) => reject(new Error(`hub serve exited with ${code}:\n${out}`)));
  });
  return Object.assign(child, { url });
}

/**
 * Joins a door to a hub's tenant the way an operator does with the CLI: `authface sync key` on the
 * door (with `cli`, this release's or an earlier one's), `authface hub wrap-key` (which registers
 * the door) and `authface hub key` at the hub, and the door's config file (a simulated relay, the
 * broker, the hub's key, the wrapped key). Returns the config's
 * path and the door's environment.
 */
export async function joinDoorByCli(
  name: string,
  fleet: { dir: string; tenantId: string; databaseUrl: string; hubEnv: Record<string, string>; brokerUrl: string; prefix: string },
  cli: string[] = CLI,
): Promise<{ env: Record<string, string>; configFile: string }> {
  const env = { AUTHFACE_DATA_DIR: path.join(fleet.dir, name) };
  // a door of an earlier release has no signing key: it is registered without one
  const { device_public_key, device_signing_key } = JSON.parse((await authface(['sync', 'key'], env, { cli })).stdout) as { device_public_key: string; device_signing_key?: string };
  const signing = device_signing_key ? ['--signing-key', device_signing_key] : [];
  const wrapped = (await authface(['hub', 'wrap-key', '--tenant', fleet.tenantId, '--device', name, '--public-key', device_public_key, ...signing, '--database-url', fleet.databaseUrl], fleet.hubEnv)).stdout;
  const { hub_public_key } = JSON.parse((await authface(['hub', 'key', '--tenant', fleet.tenantId, '--database-url', fleet.databaseUrl], fleet.hubEnv)).stdout) as { hub_public_key: string };
  const keyFile = path.join(fleet.dir, `${name}-tenant-key.json`);
  fs.writeFileSync(keyFile, wrapped);
  const configFile = path.join(fleet.dir, `${name}.yaml`);
  fs.writeFileSync(
    configFile,
    stringify({
      device_id: name,
      tenant_id: fleet.tenantId,
      liveness: 'passive',
      doors: [{ id: 'main', relay: { driver: 'simulated' } }],
      mqtt: { url: fleet.brokerUrl, topic_prefix: fleet.prefix },
      remote_commands: { public_key: hub_public_key },
      sync: { tenant_key_file: keyFile },
    }),
  );
  return { env, configFile };
}

/** What `authface` wrote when it refused to start: exit code and both outputs. */
export async function refusal(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return authface(args, { PORT: '0', LOG_LEVEL: 'info', ...env }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

/** One line on stderr saying what to fix: no Node stack, and no fatal log line of a half-started engine before it. */
export function assertOneLine(r: { code: number; stdout: string; stderr: string }, expected: RegExp): void {
  assert.equal(r.code, 2, r.stderr);
  const lines = r.stderr.trim().split('\n').filter((l) => !l.startsWith('authface: data directory'));
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /^authface: /);
  assert.match(lines[0], expected);
  assert.doesNotMatch(r.stderr, /^\s+at /m);
  assert.doesNotMatch(r.stdout, /face engine failed to start|"level":60/, 'no fatal line before the refusal');
}
