import fs from 'node:fs';
import type { GalleryIndex } from '../biometrics/gallery.ts';
import { OperatorError } from '../errors.ts';
import type { Store } from '../store/index.ts';

const REVOKED_KEY = 'fleet_revoked';

export interface RevokedMark {
  tenant_id: string;
  device_id: string;
  revoked_at: string;
  wiped_at: string;
}

/**
 * What a device does with the hub's signed revocation: every person of the fleet tenant is erased
 * (templates, PINs, groups, tombstones; audit entries keep a pseudonym, as for any erasure), with what was
 * waiting for the hub, and the tenant key file and broker password are deleted. A mark in the
 * database says why the device holds nothing, so it does not start syncing again: it must join anew.
 * Returns the mark, and how many people were erased.
 */
export function wipeRevokedDevice(store: Store, index: GalleryIndex, mark: Omit<RevokedMark, 'wiped_at'>, files: readonly string[]): RevokedMark & { erased: number } {
  const tenantId = mark.tenant_id;
  const people = (store.db.prepare('SELECT external_user_id FROM users WHERE tenant_id = ?').all(tenantId) as { external_user_id: string }[]).map((u) => u.external_user_id);
  const journal = store.users.changeJournal;
  const wiped: RevokedMark = { ...mark, wiped_at: new Date().toISOString() };
  store.users.changeJournal = null; // nothing of this goes to the hub
  try {
    store.db.transaction(() => {
      for (const id of people) store.eraseUser(tenantId, id, () => null);
      // not even the tombstones stay: this device will never be offered these people again
      store.db.prepare('DELETE FROM users WHERE tenant_id = ?').run(tenantId);
      for (const table of ['sync_outbox', 'sync_cursors', 'sync_snapshots', 'sync_snapshot_users', 'sync_snapshot_checks', 'sync_erasures', 'group_members']) store.db.prepare(`DELETE FROM ${table} WHERE tenant_id = ?`).run(tenantId);
      store.db
        .prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value')
        .run(REVOKED_KEY, JSON.stringify(wiped));
    })();
  } finally {
    store.users.changeJournal = journal;
  }
  store.db.pragma('wal_checkpoint(TRUNCATE)');
  const gallery = index.of(tenantId);
  for (const id of people) gallery.remove(id);
  for (const file of files) fs.rmSync(file, { force: true });
  return { ...wiped, erased: people.length };
}

/** What a revoked device tells whoever asks it for anything: why, and how to use it again. */
export function revokedMessage(mark: Pick<RevokedMark, 'device_id' | 'revoked_at' | 'wiped_at'>): string {
  return `this device (${mark.device_id}) was revoked by the hub on ${mark.revoked_at}; its templates and keys were erased on ${mark.wiped_at}. To use it again, join with a new code (authface hub device add --name <a new name>, then authface join)`;
}

/** The revocation this device received, if any. */
export function revokedMark(store: Pick<Store, 'db'>): RevokedMark | null {
  const row = store.db.prepare('SELECT value FROM meta WHERE key = ?').get(REVOKED_KEY) as { value: string } | undefined;
  return row ? (JSON.parse(String(row.value)) as RevokedMark) : null;
}

/**
 * Refuses to start fleet sync as a device the hub revoked. A revoked name is never given again,
 * so a device that joined anew (another name) starts.
 */
export function assertNotRevoked(store: Pick<Store, 'db'>, deviceId: string): void {
  const mark = revokedMark(store);
  if (mark?.device_id !== deviceId) return;
  throw new OperatorError(revokedMessage(mark));
}
