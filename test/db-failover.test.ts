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
    assert.match(stdout, new RegExp(`✓ log epoch +${(await fleetOf().epoch(pair.primary)).replace('.', '\\.')} \\(system identifier\\.timeline`));
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
    const epochBefore = await fleet.epoch(pair.primary);
    await poll(() => acknowledged.size >= 100, 'a hundred changes acknowledged');
    const ackedBefore = acknowledged.size;
    pair.killPrimary();
    const died = performance.now();
    const diedAt = Date.now();
    // while no host takes writes, the hub's API says so (and its process carries on)
    const listUsers = () => fetch(`${fleet.hub.url}/biometry/v1/list-users`, { method: 'POST', headers: { authorization: `Bearer ${fleet.apiKey}`, 'content-type': 'application/json' }, body: '{}' });
    const during = await listUsers();
    const refusal = (await during.json()) as { error: { code: string } };
    assert.deepEqual([during.status, refusal.error.code, during.headers.get('retry-after')], [503, 'database_unavailable', '2']);
    // what a door makes while no host takes writes waits in its outbox
    fleet.enrol('back', range('q', 20));
    await pair.promoteStandby();
    const promoted = performance.now();
    await deleting;
    const hubStore = await HubStore.open(pair.url);
    try {
      await fleet.converged(hubStore);
      const firstOnNew = died + ((await fleet.firstChangeAfter(pair.standby, diedAt)) - diedAt);
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
      // nothing was lost: each door found its place in the new epoch's log and went on from it
      const epochAfter = await fleet.epoch(pair.standby);
      assert.notEqual(epochAfter, epochBefore);
      for (const d of [front, back]) assert.equal(d.sync.replica.position(tenantId).epoch, epochAfter, `${d.name} follows the log in its new epoch`);
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

  it("the doors notice the new epoch, find their place lost, load a snapshot and end with exactly the hub's people; numbers given again are applied, not taken for duplicates; a lost deletion is made again and reported", async function () {
    const fleet = fleetOf();
    const { pair, tenantId } = fleet;
    const [front, back] = fleet.doors;
    fleet.enrol('front', range('p', 100));
    const hubStore = await HubStore.open(pair.url);
    try {
      await fleet.converged(hubStore, 'the first hundred everywhere');
      const replicated = await fleet.head(pair.primary);
      await poll(async () => (await fleet.head(pair.standby)) === replicated, 'the standby has them');
      const epochBefore = await fleet.epoch(pair.primary);
      assert.equal(front.sync.replica.position(tenantId).epoch, epochBefore, 'the doors follow the log in its epoch');
      // the standby stops streaming; forty more and a deletion are acknowledged and applied by both doors, on the primary only
      await pair.detachStandby();
      fleet.enrol('front', range('q', 40));
      front.store.eraseUser(tenantId, 'p5', () => null);
      await fleet.converged(hubStore, 'the forty and the deletion at both doors');
      const applied = front.sync.cursor;
      assert.equal(applied, replicated + 41);
      assert.equal(back.store.users.get(tenantId, 'p5'), undefined);
      pair.killPrimary();
      await pair.promoteStandby();
      const promoted = performance.now();
      // (the doors may already have sent the lost deletion again: the head alone does not say)
      const forty = await pair.query(pair.standby, "SELECT COUNT(*)::int AS n FROM hub_changes WHERE external_user_id LIKE 'q%'");
      assert.equal(forty.rows[0].n, 0, 'the promoted standby lacks the last forty');
      const epochAfter = await fleet.epoch(pair.standby);
      assert.notEqual(epochAfter, epochBefore, 'the promotion starts a new epoch');
      // the hub goes on from the new primary: its next numbers are the lost ones, given to other changes
      fleet.enrol('back', range('r', 10));
      await fleet.converged(hubStore, "both doors hold exactly the hub's people again");
      console.log(`      rewound by 40: every door held exactly the hub's people (ten new ones too) ${Math.round(performance.now() - promoted)} ms after the promotion`);
      const live = (await hubStore.pool.query<{ external_user_id: string }>('SELECT external_user_id FROM hub_users WHERE tenant_id = $1 AND NOT deleted ORDER BY external_user_id COLLATE "C"', [tenantId])).rows.map((r) => r.external_user_id);
      assert.deepEqual(live, [...range('p', 100).filter((id) => id !== 'p5'), ...range('r', 10)].sort(), 'the forty are lost with the old primary; the deletion is not');
      for (const d of [front, back]) {
        assert.equal(d.store.users.get(tenantId, 'q0'), undefined, `${d.name} does not keep a person the hub lost`);
        assert.equal(d.store.users.get(tenantId, 'p5'), undefined, `${d.name} did not bring back the person whose deletion the hub lost`);
        assert.ok(d.store.users.get(tenantId, 'r9'), `${d.name} holds the changes sequenced at the numbers given again`);
        assert.equal(d.sync.replica.position(tenantId).epoch, epochAfter, `${d.name} follows the log in its new epoch`);
      }
      // the hub saw it too, in the doors' fetches or their states, whichever came first
      assert.match(fleet.hubOutput, /a device applied changes (the log no longer holds|beyond the log's head)/);
      const alarms = (await hubStore.pool.query<{ type: string; reason: string }>("SELECT type, reason FROM hub_audit_events WHERE tenant_id = $1 AND type = 'deletion_lost'", [tenantId])).rows;
      assert.equal(alarms.length, 1, 'the admin is told once, whichever door sent the deletion first');
      assert.match(alarms[0].reason, /a deletion lost in a database failover, sent again by (front|back)/);
    } finally {
      await hubStore.close();
    }
  });
});
