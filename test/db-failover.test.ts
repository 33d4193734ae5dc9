import assert from 'node:assert/strict';
import fs from 'node:fs';
import { HubStore } from '../src/hub/store.ts';
import { authface } from './support/cli.ts';
import { FailoverFleet, poll } from './support/failover-fleet.ts';

const range = (prefix: string, n: number, from = 0) => Array.from({ length: n }, (_, i) => `${prefix}${from + i}`);

/** A FailoverFleet for the suite (two doors), with the hub's output kept when a test fails. */
function withFleet(options: { synchronous: boolean }): () => FailoverFleet {
  let fleet: FailoverFleet | undefined;
  before(async function () {
    fleet = await FailoverFleet.start({ ...options, doors: ['front', 'back'] });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed' && fleet) fs.writeFileSync('/tmp/hub-output.log', fleet.hubOutput);
  });
  after(async () => fleet?.close());
  return () => fleet as FailoverFleet;
}

/**
 * Issue 21: the hub's database is a primary streaming to a standby (two PostgreSQL clusters of the
 * test's own). `authface hub serve` is given both hosts; two doors send a stream of enrolments and
 * deletions; the primary dies with SIGKILL and the standby is promoted by command.
 */
describe('issue 21: the hub on a synchronous standby, its primary killed mid-stream', function () {
  this.timeout(300_000);
  const fleetOf = withFleet({ synchronous: true });

  it('authface hub doctor says the database is replicated synchronously, and names both hosts', async function () {
    const { pair, hubEnv } = fleetOf();
    const { stdout } = await authface(['hub', 'doctor', '--database-url', pair.url], hubEnv);
    assert.match(stdout, new RegExp(`✓ database +writing to 127\\.0\\.0\\.1:${pair.primary.port}`));
    assert.match(stdout, /✓ replicas +synchronous \(synchronous_commit=on, standbys: standby streaming sync\)/);
    const single = await authface(['hub', 'doctor', '--database-url', pair.primary.url], hubEnv);
    assert.match(single.stdout, /! failover +the database URL names one host/);
  });

  it("killed mid-stream and the standby promoted: every acknowledged change is in the new log, no number twice, both doors end with the hub's people", async function () {
    const fleet = fleetOf();
    const { pair, tenantId, acknowledged } = fleet;
    const [front, back] = fleet.doors;
    // 300 enrolments at the front door, and the back door deleting every sixth one once it holds it
    fleet.enrol('front', range('p', 300));
    const deleting = (async () => {
      for (let i = 0; i < 300; i += 6) {
        await poll(() => back.store.users.get(tenantId, `p${i}`) !== undefined, `p${i} at the back door`);
        back.store.eraseUser(tenantId, `p${i}`, () => null);
      }
    })();
    await poll(() => acknowledged.size >= 100, 'a hundred changes acknowledged');
    const ackedBefore = acknowledged.size;
    pair.killPrimary();
    const died = performance.now();
    // while no host takes writes, the hub's API says so (and its process carries on)
    const listUsers = () => fetch(`${fleet.hub.url}/biometry/v1/list-users`, { method: 'POST', headers: { authorization: `Bearer ${fleet.apiKey}`, 'content-type': 'application/json' }, body: '{}' });
    const during = await listUsers();
    const refusal = (await during.json()) as { error: { code: string } };
    assert.deepEqual([during.status, refusal.error.code, during.headers.get('retry-after')], [503, 'database_unavailable', '2']);
    // what a door makes while no host takes writes waits in its outbox
    fleet.enrol('back', range('q', 20));
    await pair.promoteStandby();
    const promoted = performance.now();
    const atPromotion = await fleet.head(pair.standby);
    await poll(async () => (await fleet.head(pair.standby)) > atPromotion, 'a change sequenced on the promoted standby');
    const firstOnNew = performance.now();
    await deleting;
    const hubStore = await HubStore.open(pair.url);
    try {
      await fleet.converged(hubStore);
      console.log(`      primary killed → standby promoted ${Math.round(promoted - died)} ms → first change sequenced on it ${Math.round(firstOnNew - died)} ms after the death; every door converged ${Math.round(performance.now() - firstOnNew)} ms after that`);
      assert.equal((await listUsers()).status, 200, "the hub's API answers again");
      const rows = (await hubStore.pool.query<{ seq: string; change_id: string }>('SELECT seq, change_id FROM hub_changes WHERE tenant_id = $1 ORDER BY seq', [tenantId])).rows;
      const seqs = rows.map((r) => Number(r.seq));
      assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), 'no number twice, none skipped');
      assert.equal(new Set(rows.map((r) => r.change_id)).size, rows.length, 'each change once');
      const bySeq = new Map(rows.map((r) => [Number(r.seq), r.change_id]));
      assert.ok(ackedBefore >= 100 && ackedBefore < 350, `killed mid-stream: ${ackedBefore} acknowledged before the death`);
      for (const [changeId, seq] of acknowledged) assert.equal(bySeq.get(seq), changeId, `acknowledged change ${changeId} at ${seq} is in the new primary's log`);
      const expected = [...range('p', 300).filter((_, i) => i % 6 !== 0), ...range('q', 20)].sort();
      const live = (await hubStore.pool.query<{ external_user_id: string }>('SELECT external_user_id FROM hub_users WHERE tenant_id = $1 AND NOT deleted ORDER BY external_user_id COLLATE "C"', [tenantId])).rows.map((r) => r.external_user_id);
      assert.deepEqual(live, expected);
      assert.equal(front.store.users.digest(tenantId).users, expected.length);
    } finally {
      await hubStore.close();
    }
  });
});

describe('issue 21: the hub on an asynchronous standby that lost the last changes', function () {
  this.timeout(300_000);
  const fleetOf = withFleet({ synchronous: false });

  it('authface hub doctor warns that a failover may lose acknowledged changes', async function () {
    const { stdout } = await authface(['hub', 'doctor', '--database-url', fleetOf().pair.url], fleetOf().hubEnv);
    assert.match(stdout, /! replicas +asynchronous \(standbys: standby streaming async\): a failover may lose the last acknowledged changes/);
  });

  it('the doors notice the rewound log (a head below what they applied), load a snapshot and end with exactly the hub\'s people; numbers given again are applied, not taken for duplicates', async function () {
    const fleet = fleetOf();
    const { pair, tenantId } = fleet;
    const [front, back] = fleet.doors;
    fleet.enrol('front', range('p', 100));
    const hubStore = await HubStore.open(pair.url);
    try {
      await fleet.converged(hubStore, 'the first hundred everywhere');
      const replicated = await fleet.head(pair.primary);
      await poll(async () => (await fleet.head(pair.standby)) === replicated, 'the standby has them');
      // the standby stops streaming; forty more are acknowledged and applied by both doors, on the primary only
      await pair.detachStandby();
      fleet.enrol('front', range('q', 40));
      await fleet.converged(hubStore, 'the forty at both doors');
      const applied = front.sync.cursor;
      assert.equal(applied, replicated + 40);
      pair.killPrimary();
      await pair.promoteStandby();
      const promoted = performance.now();
      assert.equal(await fleet.head(pair.standby), replicated, 'the promoted standby lacks the last forty');
      // the hub goes on from the new primary: its next numbers are the lost ones, given to other changes
      fleet.enrol('back', range('r', 10));
      await fleet.converged(hubStore, "both doors hold exactly the hub's people again");
      console.log(`      rewound by 40: every door held exactly the hub's people (ten new ones too) ${Math.round(performance.now() - promoted)} ms after the promotion`);
      const live = (await hubStore.pool.query<{ external_user_id: string }>('SELECT external_user_id FROM hub_users WHERE tenant_id = $1 AND NOT deleted ORDER BY external_user_id COLLATE "C"', [tenantId])).rows.map((r) => r.external_user_id);
      assert.deepEqual(live, [...range('p', 100), ...range('r', 10)].sort(), 'the forty are lost with the old primary');
      for (const d of [front, back]) {
        assert.equal(d.store.users.get(tenantId, 'q0'), undefined, `${d.name} does not keep a person the hub lost`);
        assert.ok(d.store.users.get(tenantId, 'r9'), `${d.name} holds the changes sequenced at the numbers given again`);
      }
      assert.match(fleet.hubOutput, /a device applied changes beyond the log's head/);
    } finally {
      await hubStore.close();
    }
  });
});
