import crypto from 'node:crypto';
import { type Db, now } from './database.ts';
import type { Factor } from './sessions.ts';

/** Non-biometric record of what happened: never images, embeddings or secrets. */
export interface AuditEvent {
  id: string;
  tenantId: string;
  type: 'session_finished' | 'user_deleted' | 'access_decision' | 'remote_unlock' | 'door_alarm' | 'pin_set' | 'pin_removed' | 'pin_lockout' | 'template_migrated' | 'template_adapted' | 'templates_retired';
  flow: string | null;
  sessionId: string | null;
  externalUserId: string | null;
  result: string | null;
  reason: string | null;
  score: number | null;
  /** The factor of a door decision (`face` or `face+pin`); null where none applies. */
  factor: Factor | null;
  /** The door of a door event (decision, remote unlock, alarm); null otherwise. */
  doorId: string | null;
  createdAt: string;
}

export function newEventId(): string {
  return `evt_${crypto.randomUUID()}`;
}

export class AuditLog {
  constructor(private readonly db: Db) {}

  record(event: Omit<AuditEvent, 'createdAt' | 'id' | 'factor' | 'doorId'> & { id?: string; factor?: Factor | null; doorId?: string | null }): AuditEvent {
    const full: AuditEvent = { ...event, id: event.id ?? newEventId(), factor: event.factor ?? null, doorId: event.doorId ?? null, createdAt: now() };
    this.db
      .prepare(
        `INSERT INTO audit_events (id, tenant_id, type, flow, session_id, external_user_id, result, reason, score, factor, door_id, created_at)
         VALUES (@id, @tenantId, @type, @flow, @sessionId, @externalUserId, @result, @reason, @score, @factor, @doorId, @createdAt)`,
      )
      .run(full);
    return full;
  }

  list(tenantId: string, limit = 100): AuditEvent[] {
    const rows = this.db
      .prepare(
        `SELECT id, tenant_id AS tenantId, type, flow, session_id AS sessionId, external_user_id AS externalUserId,
                result, reason, score, factor, door_id AS doorId, created_at AS createdAt
         FROM audit_events WHERE tenant_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?`,
      )
      .all(tenantId, limit) as AuditEvent[];
    return rows;
  }
}

/** A door event not yet in the hub's central store (fleet sync forwards them, oldest first). */
export interface UnforwardedDoorEvent {
  id: string;
  doorId: string;
  type: string;
  result: string | null;
  reason: string | null;
  externalUserId: string | null;
  score: number | null;
  factor: string | null;
  createdAt: string;
}

/** Door events of a tenant that the hub has not acknowledged yet. */
export function unforwardedDoorEvents(db: Db, tenantId: string, limit: number): UnforwardedDoorEvent[] {
  return db
    .prepare(
      `SELECT id, door_id AS doorId, type, result, reason, external_user_id AS externalUserId, score, factor, created_at AS createdAt
       FROM audit_events WHERE tenant_id = ? AND door_id IS NOT NULL AND forwarded_at IS NULL ORDER BY created_at, rowid LIMIT ?`,
    )
    .all(tenantId, limit) as UnforwardedDoorEvent[];
}

export function markForwarded(db: Db, eventIds: readonly string[]): void {
  const mark = db.prepare('UPDATE audit_events SET forwarded_at = ? WHERE id = ?');
  const at = now();
  db.transaction(() => {
    for (const id of eventIds) mark.run(at, id);
  })();
}
