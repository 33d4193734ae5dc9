import { newEventId } from '../store/audit.ts';
import type { Change, ModelTemplate, SubmittedChange } from '../sync/protocol.ts';
import { HubError } from './errors.ts';
import type { HubStore } from './store.ts';

/**
 * How an admin ends a conflict (a door's change the hub refused: `stale_version` or `deleted`):
 * - `keep_hub`: the hub's version of the person stands (enrolled as the hub holds them, or deleted);
 * - `take_door`: the door's change is taken after all;
 * - `delete`: the person is deleted everywhere.
 */
export const CONFLICT_RESOLUTIONS = ['keep_hub', 'take_door', 'delete'] as const;
export type ConflictResolution = (typeof CONFLICT_RESOLUTIONS)[number];

export const isConflictResolution = (value: string): value is ConflictResolution => (CONFLICT_RESOLUTIONS as readonly string[]).includes(value);

interface HeldPerson {
  version: number;
  deleted: boolean;
  model: ModelTemplate['model'] | null;
  key_version: number | null;
  template: ModelTemplate['template'] | null;
  templates: ModelTemplate[];
}

/**
 * Resolves one open conflict. Every resolution is a change of the tenant's log, at a version above
 * both the hub's and the door's, so every door (the one whose change was refused too) ends with the
 * same person; it is sequenced, marked resolved and audited in one transaction. The change is
 * returned for the caller to publish.
 */
export async function resolveConflict(store: HubStore, tenantId: string, changeId: string, resolution: ConflictResolution, admin: string): Promise<Change> {
  return store.transaction(async (db) => {
    // the tenant's counter row first, as every writer locks it
    const counter = await db.query('SELECT 1 FROM hub_tenants WHERE tenant_id = $1 FOR UPDATE', [tenantId]);
    if (counter.rowCount === 0) throw new HubError(`no tenant ${tenantId} at the hub`);
    const conflict = (
      await db.query<{ external_user_id: string; reason: string; body: SubmittedChange }>(
        'SELECT external_user_id, reason, body FROM hub_conflicts WHERE tenant_id = $1 AND change_id = $2 AND resolved_at IS NULL FOR UPDATE',
        [tenantId, changeId],
      )
    ).rows[0];
    if (!conflict) throw new HubError(`no open conflict ${changeId} in tenant ${tenantId} (already resolved?)`);
    const person = conflict.external_user_id;
    const held = (
      await db.query<HeldPerson>('SELECT version, deleted, model, key_version, template, templates FROM hub_users WHERE tenant_id = $1 AND external_user_id = $2 FOR UPDATE', [tenantId, person])
    ).rows[0];
    const version = Math.max(held?.version ?? 0, conflict.body.version) + 1;
    const body = await resolvedChange(store, tenantId, { person, version, held, door: conflict.body, resolution });
    const result = await store.appendWithin(db, tenantId, body, { origin: `console:${admin}` });
    if (result.status !== 'sequenced') throw new HubError(`the resolution could not be sequenced (${result.status === 'conflict' ? result.reason : result.status})`);
    await db.query('UPDATE hub_conflicts SET resolved_at = now(), resolution = $3, resolved_by = $4 WHERE tenant_id = $1 AND change_id = $2', [tenantId, changeId, resolution, admin]);
    await db.query(
      `INSERT INTO hub_audit_events (tenant_id, id, type, flow, session_id, external_user_id, result, reason, score, factor, door_id)
       VALUES ($1, $2, 'conflict_resolved', NULL, NULL, $3, $4, $5, NULL, NULL, NULL)`,
      [tenantId, newEventId(), person, resolution, `${conflict.reason} ${changeId} by ${admin}`],
    );
    return result.change;
  });
}

/** The change a resolution makes: the person as the admin chose, at `version`, sealed for it. */
async function resolvedChange(
  store: HubStore,
  tenantId: string,
  c: { person: string; version: number; held: HeldPerson | undefined; door: SubmittedChange; resolution: ConflictResolution },
): Promise<SubmittedChange> {
  const deletion: SubmittedChange = { kind: 'user.delete', external_user_id: c.person, version: c.version };
  const source: { version: number; first: ModelTemplate; further: ModelTemplate[] } | null =
    c.resolution === 'take_door' && c.door.kind === 'user.upsert'
      ? { version: c.door.version, first: { model: c.door.model, key_version: c.door.key_version, template: c.door.template }, further: c.door.templates ?? [] }
      : c.resolution === 'keep_hub' && c.held && !c.held.deleted && c.held.template && c.held.model && c.held.key_version
        ? { version: c.held.version, first: { model: c.held.model, key_version: c.held.key_version, template: c.held.template }, further: c.held.templates }
        : null;
  if (c.resolution === 'delete' || !source) return deletion;
  // a template is sealed to its person's version: sealed again for the new one, under the current key
  const to = { version: c.version, key: await store.keys.current(tenantId) };
  const person = { externalUserId: c.person, version: source.version };
  const [first] = await store.resealTemplates(tenantId, person, [source.first], to);
  if (!first) throw new HubError(`the template of ${c.person} does not open at the hub: resolve by deleting the person`);
  const further = await store.resealTemplates(tenantId, person, source.further, to);
  return { kind: 'user.upsert', external_user_id: c.person, version: c.version, model: first.model, key_version: first.key_version, template: first.template, ...(further.length ? { templates: further } : {}) };
}
