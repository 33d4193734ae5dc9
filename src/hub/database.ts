import pg from 'pg';
import { HubError } from './errors.ts';
import { DatabaseUnavailableError, isDatabaseUnavailable } from '../errors.ts';

/**
 * The hub's connection pool, on one PostgreSQL server or on several (a primary and its standbys):
 * `postgresql://user@host1:5432,host2:5432/db?target_session_attrs=read-write`, as libpq takes it.
 * node-postgres connects to one host only, so the pool's clients find the writable one themselves:
 * each host in turn, the first that accepts writes (`transaction_read_only` off) is used until a
 * connection to it fails, and then they look again. After a failover the pool's next connection
 * goes to the promoted standby; a request that was running when the primary died fails (the API
 * answers 503 `database_unavailable`, the doors' outboxes send again).
 */

export interface HubDatabaseUrl {
  /** One connection string per host, in the order given. */
  hosts: { label: string; connectionString: string }[];
  /** `read-write`: only a host that accepts writes; `any`: the first that answers. */
  targetSessionAttrs: 'read-write' | 'any';
}

/** Splits a connection string with several hosts into one per host (a single host stays as it is). */
export function parseHubDatabaseUrl(url: string): HubDatabaseUrl {
  const m = /^(postgres(?:ql)?:\/\/)([^@/?#]*@)?([^/?#]*)(.*)$/.exec(url);
  if (!m) return { hosts: [{ label: 'the database', connectionString: url }], targetSessionAttrs: 'any' };
  const [, scheme, auth = '', hostList, rest] = m;
  const [pathPart, query = ''] = rest.split('?', 2);
  const params = new URLSearchParams(query);
  const attrs = params.get('target_session_attrs') ?? (hostList.includes(',') ? 'read-write' : 'any');
  if (attrs !== 'read-write' && attrs !== 'any') throw new HubError(`target_session_attrs=${attrs} in the hub's database URL: use read-write (or any)`);
  params.delete('target_session_attrs');
  const tail = `${pathPart}${params.size > 0 ? `?${params.toString()}` : ''}`;
  const hosts = hostList.split(',').filter(Boolean);
  if (hosts.length === 0) return { hosts: [{ label: 'the database', connectionString: url }], targetSessionAttrs: attrs };
  return { hosts: hosts.map((h) => ({ label: h, connectionString: `${scheme}${auth}${h}${tail}` })), targetSessionAttrs: attrs };
}

/** Which host of the list takes the hub's writes, found at the first connection and again after a loss. */
class WritableHost {
  #found: { host: string; port: number } | undefined;

  constructor(private readonly url: HubDatabaseUrl) {}

  async address(): Promise<{ host: string; port: number }> {
    if (this.#found) return this.#found;
    const problems: string[] = [];
    for (const host of this.url.hosts) {
      const probe = new pg.Client({ connectionString: host.connectionString, connectionTimeoutMillis: 3000 });
      try {
        // one host that may be anything: no need to ask it
        if (this.url.hosts.length === 1 && this.url.targetSessionAttrs === 'any') return (this.#found = { host: probe.host, port: probe.port });
        await probe.connect();
        const r = await probe.query<{ transaction_read_only: string }>('SHOW transaction_read_only');
        if (this.url.targetSessionAttrs === 'any' || r.rows[0].transaction_read_only === 'off') return (this.#found = { host: probe.host, port: probe.port });
        problems.push(`${host.label} is read-only (a standby)`);
      } catch (err) {
        problems.push(`${host.label}: ${(err as Error).message}`);
      } finally {
        await probe.end().catch(() => undefined);
      }
    }
    throw new DatabaseUnavailableError(`no writable PostgreSQL among the hub's database hosts (${problems.join('; ')})`);
  }

  forget(): void {
    this.#found = undefined;
  }
}

/**
 * The epoch of the log a server holds: its system identifier (the same on a primary and the
 * standbys made from it) and its WAL timeline, which a promotion, or a recovery to a point in time,
 * moves on. Changes sequenced under one epoch are a log no other epoch rewrites; a standby promoted
 * without the primary's last commits starts a new epoch at a head below them. Null on a standby
 * (nothing is sequenced there), or where the server does not say.
 */
const EPOCH_SQL = `SELECT system_identifier::text || '.' || CASE WHEN pg_is_in_recovery() THEN NULL
                     ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::text END AS epoch
                   FROM pg_control_system()`;

async function epochOf(client: pg.Client): Promise<string | null> {
  try {
    return (await client.query<{ epoch: string | null }>(EPOCH_SQL)).rows[0]?.epoch ?? null;
  } catch (err) {
    if (isDatabaseUnavailable(err)) throw err;
    return null; // a server that keeps its control data to itself (some managed services)
  }
}

/**
 * A pool whose every new connection goes to the writable host. A connection lost, or a host that
 * turned read-only, makes the next connection look again. `onEpoch` hears the log's epoch of each
 * new connection (a failover shows as a new one).
 */
export function hubPool(databaseUrl: string, options: { max: number; onIdleError?: (err: Error) => void; onEpoch?: (epoch: string | null) => void }): pg.Pool {
  const target = new WritableHost(parseHubDatabaseUrl(databaseUrl));
  class WritableHostClient extends pg.Client {
    override connect(): Promise<pg.Client>;
    override connect(callback: ((err: Error) => void) | ((err: null, c: pg.Client) => void)): void;
    override connect(callback?: ((err: Error) => void) | ((err: null, c: pg.Client) => void)): Promise<pg.Client> | void {
      const connecting = (async () => {
        // the pool made this client with the first host's parameters: aim it at the writable one
        const found = await target.address();
        Object.assign(this, found);
        Object.assign((this as unknown as { connectionParameters: object }).connectionParameters, found);
        this.on('error', (err) => isDatabaseUnavailable(err) && target.forget());
        try {
          await super.connect();
          if (options.onEpoch) options.onEpoch(await epochOf(this));
          return this;
        } catch (err) {
          target.forget();
          throw err;
        }
      })();
      if (!callback) return connecting;
      const done = callback as (err: Error | null, c?: pg.Client) => void;
      connecting.then((c) => done(null, c), (err: Error) => done(err));
    }
  }
  const pool = new pg.Pool({ connectionString: parseHubDatabaseUrl(databaseUrl).hosts[0].connectionString, max: options.max, Client: WritableHostClient });
  // an idle connection that the server drops (a restart, a failover) must not end the hub: the
  // pool replaces it on the next query
  pool.on('error', (err) => {
    if (isDatabaseUnavailable(err)) target.forget();
    options.onIdleError?.(err);
  });
  return pool;
}

/** How the hub's database is replicated, as its primary says (hub doctor). */
export interface Replication {
  /** The server the hub writes to. */
  server: string;
  /** `synchronous`: a commit waits until a standby has it; `asynchronous`: standbys stream but may lag; `none`: no standby. */
  mode: 'synchronous' | 'asynchronous' | 'none';
  synchronousCommit: string;
  synchronousStandbyNames: string;
  standbys: { name: string; state: string; syncState: string }[];
}

export async function replicationOf(pool: pg.Pool): Promise<Replication> {
  const settings = await pool.query<{ server: string; commit: string; names: string }>(
    `SELECT COALESCE(host(inet_server_addr()), 'local socket') || ':' || current_setting('port') AS server,
            current_setting('synchronous_commit') AS commit, current_setting('synchronous_standby_names') AS names`,
  );
  // pg_stat_replication's rows are visible to superusers and pg_monitor members; others see none
  const standbys = await pool.query<{ name: string; state: string; sync_state: string }>('SELECT application_name AS name, state, sync_state FROM pg_stat_replication ORDER BY application_name');
  const { server, commit, names } = settings.rows[0];
  const waits = names.trim() !== '' && !['off', 'local'].includes(commit);
  const synchronous = waits && standbys.rows.some((s) => s.sync_state === 'sync' || s.sync_state === 'quorum');
  const mode = synchronous ? 'synchronous' : standbys.rows.length > 0 || waits ? 'asynchronous' : 'none';
  return { server, mode, synchronousCommit: commit, synchronousStandbyNames: names, standbys: standbys.rows.map((s) => ({ name: s.name, state: s.state, syncState: s.sync_state })) };
}
