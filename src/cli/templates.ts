import { type ModelId, MATCHERS, PRIMARY_MODEL, isModelId, migrationProgress } from '../biometrics/matchers/index.ts';
import type { Store } from '../store/index.ts';
import type { Tenant } from '../store/tenants.ts';
import { CommandError } from './errors.ts';
import { FLEET_MODEL } from '../sync/fleet-model.ts';

/** `authface templates status`: per tenant, its people and how many hold each model's template. */
export function templateStatus(store: Store) {
  const names = new Map(store.tenants.list().map((t) => [t.id, t.name]));
  return store.users.modelCoverage().map((c) => ({ tenant: names.get(c.tenantId) ?? c.tenantId, tenant_id: c.tenantId, people: c.people, by_model: c.byModel, progress: migrationProgress(c) }));
}

/**
 * `authface templates retire`: deletes the tenant's templates of an older model (every older one
 * by default) of the people who hold the new model's. A person who holds only the old one keeps
 * it: retiring it would lock them out. The running service needs no restart: it decides those
 * people by the new model already. Audited, without any id.
 */
export function retireTemplates(store: Store, tenant: Tenant, model?: string) {
  if (model !== undefined && !isModelId(model)) throw new CommandError(`--model must be one of ${MATCHERS.map((m) => m.id).join(', ')}`);
  if (model === PRIMARY_MODEL) throw new CommandError(`${PRIMARY_MODEL} is the model of new templates: it cannot be retired`);
  const fleet = store.db.prepare('SELECT 1 FROM sync_cursors WHERE tenant_id = ? UNION SELECT 1 FROM sync_snapshots WHERE tenant_id = ?').get(tenant.id, tenant.id) !== undefined;
  if (fleet && (model === undefined || model === FLEET_MODEL)) {
    throw new CommandError(`${tenant.name} is a fleet tenant: its ${FLEET_MODEL} templates are the ones the fleet replicates and checks duplicates with, and doors of an earlier release decide by them, so its doors keep them`);
  }
  const older: ModelId[] = model ? [model] : MATCHERS.map((m) => m.id).filter((m) => m !== PRIMARY_MODEL);
  const results = older.map((m) => {
    const { retired, kept } = store.db.transaction(() => {
      const r = store.users.retireModel(tenant.id, m);
      store.audit.record({ tenantId: tenant.id, type: 'templates_retired', flow: null, sessionId: null, externalUserId: null, result: String(r.retired), reason: m, score: null });
      return r;
    })();
    return { model: m, people_retired: retired, people_kept: kept };
  });
  // freed pages hold the deleted ciphertexts until overwritten (secure_delete is on) and checkpointed
  store.db.pragma('wal_checkpoint(TRUNCATE)');
  return { tenant: tenant.name, tenant_id: tenant.id, retired: results };
}
