import type { Db } from './database.ts';

/**
 * Removes a person's identifier from every row that names them, once they are deleted: their PIN,
 * their group memberships and a snapshot's staged copy of them go, their sessions forget whom they were about, and their audit
 * events keep a keyed pseudonym instead, so the trail stays linkable (enrolled, opened, deleted)
 * without saying who it was.
 */
export function eraseIdentity(db: Db, tenantId: string, externalUserId: string, pseudonym: string): void {
  db.prepare('DELETE FROM user_pins WHERE tenant_id = ? AND external_user_id = ?').run(tenantId, externalUserId);
  db.prepare('DELETE FROM group_members WHERE tenant_id = ? AND external_user_id = ?').run(tenantId, externalUserId);
  // a snapshot being staged holds the hub's sealed copy of them
  db.prepare('DELETE FROM sync_snapshot_users WHERE tenant_id = ? AND external_user_id = ? AND user IS NOT NULL').run(tenantId, externalUserId);
  db.prepare('UPDATE sessions SET external_user_id = NULL WHERE tenant_id = ? AND external_user_id = ?').run(tenantId, externalUserId);
  db.prepare('UPDATE sessions SET result_user_id = NULL WHERE tenant_id = ? AND result_user_id = ?').run(tenantId, externalUserId);
  db.prepare('UPDATE audit_events SET external_user_id = ? WHERE tenant_id = ? AND external_user_id = ?').run(pseudonym, tenantId, externalUserId);
}
