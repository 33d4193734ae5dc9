import type { ModelId } from '../biometrics/matchers/index.ts';
import type { BiometryStore, FinishResult } from './biometry-store.ts';
import type { Store } from './index.ts';

class Rollback extends Error {
  constructor(readonly result: FinishResult) {
    super(result);
  }
}

/**
 * The device's SQLite store behind the async BiometryStore interface. Each call runs to completion
 * synchronously (better-sqlite3), so a transaction here never spans an await and nothing else can
 * run inside it.
 */
export function sqliteBiometryStore(store: Store): BiometryStore {
  const { db, tenants, sessions, users, audit } = store;
  return {
    models: users.models,
    learnsFromCaptures: true,
    tenants: {
      create: async (input) => tenants.create(input),
      get: async (id) => tenants.get(id),
      createKey: async (tenantId) => tenants.createKey(tenantId),
      revokeKey: async (keyId) => tenants.revokeKey(keyId),
      findByApiKey: async (apiKey) => tenants.findByApiKey(apiKey),
    },
    sessions: {
      create: async (input) => sessions.create(input),
      byId: async (tenantId, id) => {
        const s = sessions.byId(id);
        return s && s.tenantId === tenantId ? s : undefined;
      },
      byClientState: async (tenantId, clientState) => sessions.byClientState(tenantId, clientState),
      byTokenHash: async (hash) => sessions.byTokenHash(hash),
      bind: async (tenantId, id) => sessions.bind(tenantId, id),
      dueForExpiry: async (limit) => sessions.dueForExpiry(limit),
    },
    users: {
      get: async (tenantId, externalUserId) => users.get(tenantId, externalUserId),
      list: async (tenantId, limit, offset) => users.list(tenantId, limit, offset),
      templates: async (user) => users.templates(user),
      templateVersions: async (user) => users.templateVersions(user),
      activeTemplates: async () => users.activeTemplates(),
    },
    audit: {
      record: async (event) => audit.record(event),
      list: async (tenantId, limit) => audit.list(tenantId, limit),
    },
    async finishSession(session, outcome, auditEvent, write) {
      try {
        db.transaction(() => {
          if (write?.kind === 'enroll') {
            const current = users.get(session.tenantId, write.externalUserId);
            const arrivedFromHub = current && write.version !== undefined && current.version >= write.version;
            if (current && !arrivedFromHub) throw new Rollback('write_conflict');
            if (!current) users.enroll(session.tenantId, write.externalUserId, write.templates, write.version);
          } else if (write?.kind === 'update') {
            const current = users.get(session.tenantId, write.user.externalUserId);
            const arrivedFromHub = current && write.version !== undefined && current.version >= write.version;
            if (!arrivedFromHub) {
              if (!current || current.version !== write.user.version) throw new Rollback('write_conflict');
              users.replaceTemplate(current, write.templates);
            }
          } else if (write?.kind === 'migrate' || write?.kind === 'adapt') {
            // both add to the person at the version the decision read
            const current = users.get(session.tenantId, write.user.externalUserId);
            if (!current || current.version !== write.user.version) throw new Rollback('write_conflict');
            // a template event is not a door event (those reach the hub's activity): no door_id, the session names the door
            const templateEvent = (type: 'template_migrated' | 'template_adapted', reason: string) =>
              audit.record({ tenantId: session.tenantId, type, flow: session.flow, sessionId: session.id, externalUserId: current.externalUserId, result: 'success', reason, score: outcome.score });
            if (write.kind === 'migrate') {
              const added = users.addTemplates(current, write.templates);
              if (added.length > 0) templateEvent('template_migrated', added.join(','));
            } else {
              for (const [model, embedding] of Object.entries(write.templates) as [ModelId, Float32Array][]) {
                const kept = users.addCapture(current, model, embedding);
                if (kept) templateEvent('template_adapted', `${model} capture ${kept.slot}${kept.replaced ? ' replaced' : ''}`);
              }
            }
          }
          // another request finished it first: roll back whatever this decision wrote
          if (!sessions.finish(session.id, outcome)) throw new Rollback('already_finished');
          audit.record(auditEvent);
        })();
        return 'finished';
      } catch (err) {
        if (err instanceof Rollback) return err.result;
        throw err;
      }
    },
    eraseUser: async (tenantId, externalUserId, auditEvent) => store.eraseUser(tenantId, externalUserId, (pseudonym) => audit.record(auditEvent(pseudonym)).id),
    purgeBefore: async (cutoff) => store.purgeBefore(cutoff),
  };
}
