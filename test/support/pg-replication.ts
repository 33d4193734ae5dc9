import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './mosquitto.ts';

const exec = promisify(execFile);

/** Debian's PostgreSQL server programs (initdb, pg_ctl, pg_basebackup), whichever major version is installed. */
function pgBin(): string {
  const root = '/usr/lib/postgresql';
  const versions = fs.existsSync(root) ? fs.readdirSync(root).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) if (fs.existsSync(path.join(root, v, 'bin', 'pg_ctl'))) return path.join(root, v, 'bin');
  throw new Error('no PostgreSQL server programs under /usr/lib/postgresql (apt-get install postgresql)');
}

/** Runs a server program as the postgres user (PostgreSQL refuses to run as root). */
async function asPostgres(program: string, args: string[]): Promise<string> {
  const asRoot = process.getuid?.() === 0;
  const [cmd, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', path.join(pgBin(), program), ...args]] : [path.join(pgBin(), program), args];
  const { stdout, stderr } = await exec(cmd, argv, { timeout: 120_000 });
  return `${stdout}${stderr}`;
}

export interface PgNode {
  name: string;
  port: number;
  dataDir: string;
  url: string;
}

/**
 * Two PostgreSQL clusters of our own on free ports, a primary and a streaming standby made with
 * pg_basebackup, torn down by `destroy` (the shared cluster on 5432 is never touched).
 * `synchronous`: the primary waits for the standby to flush every commit (synchronous_standby_names).
 */
export class PgReplicaPair {
  private constructor(
    readonly dir: string,
    readonly primary: PgNode,
    readonly standby: PgNode,
  ) {}

  static async create(options: { synchronous: boolean }): Promise<PgReplicaPair> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-pg-pair-'));
    fs.chownSync(dir, ...postgresIds());
    const node = async (name: string): Promise<PgNode> => {
      const port = await freePort();
      return { name, port, dataDir: path.join(dir, name), url: `postgresql://postgres@127.0.0.1:${port}/postgres` };
    };
    const pair = new PgReplicaPair(dir, await node('primary'), await node('standby'));
    await asPostgres('initdb', ['-D', pair.primary.dataDir, '-U', 'postgres', '--auth=trust', '--no-sync']);
    fs.appendFileSync(
      path.join(pair.primary.dataDir, 'postgresql.conf'),
      [
        `port = ${pair.primary.port}`,
        "listen_addresses = '127.0.0.1'",
        `unix_socket_directories = '${dir}'`,
        'wal_level = replica',
        'max_wal_senders = 5',
        'fsync = on',
        `synchronous_standby_names = '${options.synchronous ? 'standby' : ''}'`,
        'synchronous_commit = on',
        '',
      ].join('\n'),
    );
    await pair.start(pair.primary);
    await asPostgres('pg_basebackup', ['-h', '127.0.0.1', '-p', String(pair.primary.port), '-U', 'postgres', '-D', pair.standby.dataDir, '-R', '-X', 'stream', '--no-sync']);
    fs.appendFileSync(
      path.join(pair.standby.dataDir, 'postgresql.auto.conf'),
      `port = ${pair.standby.port}\nprimary_conninfo = 'host=127.0.0.1 port=${pair.primary.port} user=postgres application_name=standby'\n`,
    );
    await pair.start(pair.standby);
    // the standby streams (and, synchronous, is the one the primary waits for) before the test starts
    const until = Date.now() + 30_000;
    for (;;) {
      const state = await pair.query(pair.primary, 'SELECT sync_state FROM pg_stat_replication');
      if (state.rows[0]?.sync_state === (options.synchronous ? 'sync' : 'async')) break;
      if (Date.now() > until) throw new Error(`the standby does not stream: ${JSON.stringify(state.rows)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    return pair;
  }

  /** The connection string a hub is given: both hosts, the writable one found at connect. */
  get url(): string {
    return `postgresql://postgres@127.0.0.1:${this.primary.port},127.0.0.1:${this.standby.port}/postgres?target_session_attrs=read-write`;
  }

  async start(node: PgNode): Promise<void> {
    await asPostgres('pg_ctl', ['-D', node.dataDir, '-l', path.join(this.dir, `${node.name}.log`), '-w', '-t', '60', 'start']);
  }

  /**
   * The standby stops streaming (its primary_conninfo emptied and reloaded): an asynchronous
   * primary goes on committing what the standby will never have.
   */
  async detachStandby(): Promise<void> {
    await this.query(this.standby, "ALTER SYSTEM SET primary_conninfo = ''");
    await this.query(this.standby, 'SELECT pg_reload_conf()');
    const until = Date.now() + 30_000;
    while ((await this.query(this.primary, 'SELECT COUNT(*)::int AS n FROM pg_stat_replication')).rows[0].n > 0) {
      if (Date.now() > until) throw new Error('the standby still streams');
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** The primary's postmaster dies with SIGKILL (its children see it and end at once). */
  killPrimary(): void {
    const pid = Number(fs.readFileSync(path.join(this.primary.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    process.kill(pid, 'SIGKILL');
  }

  /**
   * Promotes the standby (pg_ctl promote, waiting until it accepts writes). It came from the
   * primary's configuration, so it would wait for a synchronous standby of its own, which it does
   * not have: every commit would hang. As an operator does, it stops waiting (README, "When the
   * database or the broker fails").
   */
  async promoteStandby(): Promise<void> {
    await asPostgres('pg_ctl', ['-D', this.standby.dataDir, '-w', '-t', '60', 'promote']);
    await this.query(this.standby, "ALTER SYSTEM SET synchronous_standby_names = ''");
    await this.query(this.standby, 'SELECT pg_reload_conf()');
  }

  async query(node: PgNode, sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
    const client = new pg.Client({ connectionString: node.url });
    await client.connect();
    try {
      return await client.query(sql, params);
    } finally {
      await client.end();
    }
  }

  async destroy(): Promise<void> {
    for (const node of [this.primary, this.standby]) {
      if (fs.existsSync(path.join(node.dataDir, 'postmaster.pid'))) await asPostgres('pg_ctl', ['-D', node.dataDir, '-m', 'immediate', 'stop']).catch(() => undefined);
    }
    // a postmaster killed with SIGKILL may leave children a moment
    await new Promise((r) => setTimeout(r, 200));
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function postgresIds(): [number, number] {
  const line = fs
    .readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  if (!line) throw new Error('no postgres user on this machine');
  const [, , uid, gid] = line.split(':');
  return [Number(uid), Number(gid)];
}
