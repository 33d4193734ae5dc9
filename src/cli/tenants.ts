import type { Store } from '../store/index.ts';
import type { LivenessMode, Tenant } from '../store/tenants.ts';
import { CommandError } from './errors.ts';

/**
 * `authface tenant …` and `authface key …`: what an operator sees and changes of tenants and
 * their API keys. API keys are shown once, at creation; afterwards only their ids and dates.
 */
export function showTenant(store: Store, t: Tenant) {
  return {
    tenant_id: t.id,
    name: t.name,
    liveness: t.livenessMode,
    pad_threshold: t.padThreshold ?? null,
    allowed_origins: t.allowedOrigins,
    created_at: t.createdAt,
    users: store.users.list(t.id, 1, 0).total,
    keys: listKeys(store, t.id),
  };
}

export function findTenant(store: Store, idOrName: string): Tenant {
  const t = store.tenants.get(idOrName) ?? store.tenants.byName(idOrName);
  if (!t) throw new CommandError(`no tenant ${idOrName} (authface tenant list)`);
  return t;
}

export function createTenant(store: Store, opts: { name: string; allowedOrigins: string[]; liveness: LivenessMode; padThreshold?: number }) {
  if (opts.allowedOrigins.length === 0) throw new CommandError('give at least one --allowed-origin: redirect_url must point to one of them');
  const t = store.tenants.create({ name: opts.name, allowedOrigins: opts.allowedOrigins, livenessMode: opts.liveness, ...(opts.padThreshold === undefined ? {} : { padThreshold: opts.padThreshold }) });
  const { keyId, apiKey } = store.tenants.createKey(t.id);
  return { tenant_id: t.id, api_key: apiKey, key_id: keyId };
}

export function updateTenant(store: Store, idOrName: string, changes: { name?: string; allowedOrigins?: string[]; liveness?: LivenessMode; padThreshold?: number | null }) {
  const t = findTenant(store, idOrName);
  // a fleet tenant's settings are the hub's: the next change of its log would undo a local edit
  if (store.tenants.followsHub(t.id)) {
    throw new CommandError(`tenant ${t.id} is a fleet tenant: change it at the hub (authface hub tenant update --tenant ${t.id} …)`);
  }
  if (changes.allowedOrigins && changes.allowedOrigins.length === 0) throw new CommandError('a tenant needs at least one allowed origin');
  const updated = store.tenants.update(t.id, {
    ...(changes.name ? { name: changes.name } : {}),
    ...(changes.allowedOrigins ? { allowedOrigins: changes.allowedOrigins } : {}),
    ...(changes.liveness ? { livenessMode: changes.liveness } : {}),
    ...(changes.padThreshold === undefined ? {} : { padThreshold: changes.padThreshold }),
  });
  return showTenant(store, updated as Tenant);
}

export function listKeys(store: Store, tenantId: string) {
  return store.tenants.keys(tenantId).map((k) => ({ key_id: k.keyId, created_at: k.createdAt, revoked_at: k.revokedAt }));
}
