import crypto from 'node:crypto';
import { type Db, now } from './database.ts';

/** Non-biometric record of what happened: never images, embeddings or secrets. */
export interface AuditEvent {
  id: string;
  tenantId: string;
  type: 'session_finished' | 'user_deleted' | 'access_decision' | 'remote_unlock' | 'door_alarm';
  flow: string | null;
  sessionId: string | null;
  externalUserId: string | null;
  result: string | null;
  reason: string | null;
  score: number | null;
  createdAt: string;
}

export function newEventId(): string {
  return `evt_${crypto.randomUUID()}`;
}

export class AuditLog {
  constructor(private readonly db: Db) {}

  record(event: Omit<AuditEvent, 'createdAt' | 'id'> & { id?: string }): AuditEvent {
    const full: AuditEvent = { ...event, id: event.id ?? newEventId(), createdAt: now() };
    this.db
      .prepare(
        `INSERT INTO audit_events (id, tenant_id, type, flow, session_id, external_user_id, result, reason, score, created_at)
         VALUES (@id, @tenantId, @type, @flow, @sessionId, @externalUserId, @result, @reason, @score, @createdAt)`,
      )
      .run(full);
    return full;
  }

  list(tenantId: string, limit = 100): AuditEvent[] {
    const rows = this.db
      .prepare(
        `SELECT id, tenant_id AS tenantId, type, flow, session_id AS sessionId, external_user_id AS externalUserId,
                result, reason, score, created_at AS createdAt
         FROM audit_events WHERE tenant_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?`,
      )
      .all(tenantId, limit) as AuditEvent[];
    return rows;
  }
}
