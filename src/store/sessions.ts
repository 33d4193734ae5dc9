import crypto from 'node:crypto';
import type { Challenge } from '../liveness/challenge.ts';
import type { NewSessionRow } from './biometry-store.ts';
import { type Db, now } from './database.ts';

export type Flow = 'enroll' | 'verify' | 'identify' | 'update_embedding';
export type SessionStatus = 'pending' | 'in_progress' | 'success' | 'fail' | 'expired';

export interface Session {
  id: string;
  tenantId: string;
  clientState: string;
  flow: Flow;
  externalUserId: string | null;
  redirectUrl: string;
  status: SessionStatus;
  reason: string | null;
  score: number | null;
  resultUserId: string | null;
  eventId: string | null;
  createdAt: string;
  expiresAt: string;
  boundAt: string | null;
  completedAt: string | null;
  /** The active-liveness challenge (null for passive sessions). */
  challenge: Challenge | null;
  /** The door a kiosk or turnstile session was opened for (null for integrator sessions). */
  doorId: string | null;
  /** `face+pin`: a PIN was typed, and identify decides among `candidates`, the users holding it. */
  factor: Factor;
  /** The users whose PIN was typed (face+pin only; emptied when the session ends). */
  candidates: string[] | null;
}

export type Factor = 'face' | 'face+pin';

export interface SessionOutcome {
  status: 'success' | 'fail' | 'expired';
  reason: string | null;
  score: number | null;
  resultUserId: string | null;
  eventId: string;
}

interface SessionRow {
  id: string;
  tenant_id: string;
  client_state: string;
  flow: Flow;
  external_user_id: string | null;
  redirect_url: string;
  status: SessionStatus;
  reason: string | null;
  score: number | null;
  result_user_id: string | null;
  event_id: string | null;
  created_at: string;
  expires_at: string;
  bound_at: string | null;
  completed_at: string | null;
  challenge: string | null;
  door_id: string | null;
  factor: Factor;
  candidates: string | null;
}

export class SessionStore {
  constructor(private readonly db: Db) {}

  /** Inserts a pending session; returns undefined when the client_state is taken in this tenant. */
  create(input: NewSessionRow): Session | undefined {
    const created = new Date();
    const session: Session = {
      id: crypto.randomUUID(),
      tenantId: input.tenantId,
      clientState: input.clientState,
      flow: input.flow,
      externalUserId: input.externalUserId,
      redirectUrl: input.redirectUrl,
      status: 'pending',
      reason: null,
      score: null,
      resultUserId: null,
      eventId: null,
      createdAt: created.toISOString(),
      expiresAt: new Date(created.getTime() + input.ttlSeconds * 1000).toISOString(),
      boundAt: null,
      completedAt: null,
      challenge: input.challenge,
      doorId: input.doorId ?? null,
      factor: input.candidates ? 'face+pin' : 'face',
      candidates: input.candidates ?? null,
    };
    const res = this.db
      .prepare(
        `INSERT INTO sessions (id, tenant_id, client_state, flow, external_user_id, redirect_url, token_hash,
                               status, created_at, expires_at, challenge, door_id, factor, candidates)
         VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)
         ON CONFLICT (tenant_id, client_state) DO NOTHING`,
      )
      .run(
        session.id,
        session.tenantId,
        session.clientState,
        session.flow,
        session.externalUserId,
        session.redirectUrl,
        input.tokenHash,
        session.createdAt,
        session.expiresAt,
        input.challenge && JSON.stringify(input.challenge),
        session.doorId,
        session.factor,
        session.candidates && JSON.stringify(session.candidates),
      );
    return res.changes === 1 ? session : undefined;
  }

  byId(id: string): Session | undefined {
    const row = this.db.prepare('SELECT * FROM sessions WHERE id = ?').get(id) as SessionRow | undefined;
    return row && toSession(row);
  }

  byClientState(tenantId: string, clientState: string): Session | undefined {
    const row = this.db
      .prepare('SELECT * FROM sessions WHERE tenant_id = ? AND client_state = ?')
      .get(tenantId, clientState) as SessionRow | undefined;
    return row && toSession(row);
  }

  byTokenHash(tokenHash: Buffer): Session | undefined {
    const row = this.db.prepare('SELECT * FROM sessions WHERE token_hash = ?').get(tokenHash) as SessionRow | undefined;
    return row && toSession(row);
  }

  /** pending → in_progress on the first use of the capture link; false if it was already bound. */
  bind(tenantId: string, id: string): boolean {
    const res = this.db
      .prepare(`UPDATE sessions SET status = 'in_progress', bound_at = ? WHERE tenant_id = ? AND id = ? AND status = 'pending'`)
      .run(now(), tenantId, id);
    return res.changes === 1;
  }

  /** Records the final outcome once; false when the session had already ended. */
  finish(id: string, outcome: SessionOutcome): boolean {
    const res = this.db
      .prepare(
        `UPDATE sessions SET status = ?, reason = ?, score = ?, result_user_id = ?, event_id = ?, completed_at = ?, candidates = NULL
         WHERE id = ? AND status IN ('pending', 'in_progress')`,
      )
      .run(outcome.status, outcome.reason, outcome.score, outcome.resultUserId, outcome.eventId, now(), id);
    return res.changes === 1;
  }

  /** Open sessions whose link has expired (oldest first). */
  dueForExpiry(limit = 500): Session[] {
    const rows = this.db
      .prepare(
        `SELECT * FROM sessions WHERE status IN ('pending', 'in_progress') AND expires_at <= ?
         ORDER BY expires_at LIMIT ?`,
      )
      .all(now(), limit) as SessionRow[];
    return rows.map(toSession);
  }
}

function toSession(row: SessionRow): Session {
  return {
    id: row.id,
    tenantId: row.tenant_id,
    clientState: row.client_state,
    flow: row.flow,
    externalUserId: row.external_user_id,
    redirectUrl: row.redirect_url,
    status: row.status,
    reason: row.reason,
    score: row.score,
    resultUserId: row.result_user_id,
    eventId: row.event_id,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    boundAt: row.bound_at,
    completedAt: row.completed_at,
    challenge: row.challenge ? (JSON.parse(row.challenge) as Challenge) : null,
    doorId: row.door_id,
    factor: row.factor,
    candidates: row.candidates ? (JSON.parse(row.candidates) as string[]) : null,
  };
}
