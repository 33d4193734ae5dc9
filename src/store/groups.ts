import type { Db } from './database.ts';

/**
 * The groups each person of a fleet tenant is in, as the hub's log sets them (user.groups). A
 * door whose policy allows only some groups asks here. A person's deletion removes their rows
 * (erasure.ts), so a later enrolment under the same id starts in no group.
 */
export class GroupStore {
  constructor(private readonly db: Db) {}

  /** Replaces the person's groups. */
  set(tenantId: string, externalUserId: string, groups: readonly string[]): void {
    this.db.prepare('DELETE FROM group_members WHERE tenant_id = ? AND external_user_id = ?').run(tenantId, externalUserId);
    const insert = this.db.prepare('INSERT INTO group_members (tenant_id, external_user_id, group_name) VALUES (?, ?, ?)');
    for (const g of new Set(groups)) insert.run(tenantId, externalUserId, g);
  }

  of(tenantId: string, externalUserId: string): string[] {
    return (
      this.db.prepare('SELECT group_name FROM group_members WHERE tenant_id = ? AND external_user_id = ? ORDER BY group_name').all(tenantId, externalUserId) as { group_name: string }[]
    ).map((r) => r.group_name);
  }

  isMember(tenantId: string, group: string, externalUserId: string): boolean {
    return this.db.prepare('SELECT 1 FROM group_members WHERE tenant_id = ? AND group_name = ? AND external_user_id = ?').get(tenantId, group, externalUserId) !== undefined;
  }
}
