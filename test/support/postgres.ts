import crypto from 'node:crypto';
import pg from 'pg';

/**
 * PostgreSQL for tests: the machine's server (127.0.0.1:5432, trust auth, database `test`), or
 * AUTHFACE_TEST_POSTGRES_URL. Each test run makes its own database and drops it afterwards. A
 * missing server fails the run: hub tests never skip.
 */
const ADMIN_URL = process.env.AUTHFACE_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

export interface TestDatabase {
  url: string;
  drop(): Promise<void>;
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `authface_test_${process.pid}_${crypto.randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  try {
    await admin.connect();
  } catch (err) {
    throw new Error(`the hub tests need PostgreSQL at ${ADMIN_URL.replace(/\/\/[^@]*@/, '//')} (start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start): ${(err as Error).message}`);
  }
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: ADMIN_URL });
      await c.connect();
      try {
        // a pool that was just ended leaves its backends for a moment: wait for them to go, so
        // FORCE (for what a failed test left open) never kills a connection that is closing
        for (let i = 0; i < 100; i++) {
          const open = await c.query('SELECT COUNT(*)::int AS n FROM pg_stat_activity WHERE datname = $1', [name]);
          if (open.rows[0].n === 0) break;
          await new Promise((r) => setTimeout(r, 50));
        }
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}
