import type { EventBus } from '../core/events.ts';
import { ServiceError } from '../errors.ts';
import type { GalleryIndex } from '../biometrics/gallery.ts';
import { type AuditLog, newEventId } from '../store/audit.ts';
import type { Db } from '../store/database.ts';
import type { Flow, Session, SessionStore } from '../store/sessions.ts';
import type { LivenessMode, Tenant } from '../store/tenants.ts';
import type { UserStore } from '../store/users.ts';
import { drawChallenge } from '../liveness/challenge.ts';
import { type Thresholds, decide } from './decisions.ts';
import { assertRedirectAllowed } from './origins.ts';
import { captureTokenHash, newCaptureToken } from './tokens.ts';

export interface SessionServiceOptions {
  publicUrl: string;
  ttlSeconds: number;
  thresholds: Thresholds;
}

export interface NewSession {
  clientState: string;
  redirectUrl: string;
  externalUserId: string | null;
}

/** Sessions the device opens for itself (kiosk, turnstile): a door, its liveness, a local redirect. */
export interface DoorSessionOptions {
  doorId: string;
  livenessMode: LivenessMode;
  /** face+pin: identify among the holders of the PIN typed only. */
  candidates?: string[];
}

/**
 * Session lifecycle: creation with a single-use capture link, binding on first use, the final
 * decision, and expiry. Every way a session ends goes through `#finish`, which records the outcome
 * and its audit event in one transaction and then announces it.
 */
export class SessionService {
  constructor(
    private readonly db: Db,
    private readonly sessions: SessionStore,
    private readonly users: UserStore,
    private readonly audit: AuditLog,
    private readonly index: GalleryIndex,
    private readonly events: EventBus,
    private readonly options: SessionServiceOptions,
  ) {}

  create(tenant: Tenant, flow: Flow, input: NewSession, door?: DoorSessionOptions): { clientState: string; biometryUrl: string; token: string } {
    // the device's own sessions return to its own kiosk page, which no tenant needs to allow
    if (!door) assertRedirectAllowed(tenant.allowedOrigins, input.redirectUrl);
    const mode = door?.livenessMode ?? tenant.livenessMode;
    const { token, hash } = newCaptureToken();
    const session = this.sessions.create({
      tenantId: tenant.id,
      clientState: input.clientState,
      flow,
      externalUserId: input.externalUserId,
      redirectUrl: input.redirectUrl,
      tokenHash: hash,
      ttlSeconds: this.options.ttlSeconds,
      challenge: mode === 'active' ? drawChallenge() : null,
      doorId: door?.doorId ?? null,
      candidates: door?.candidates ?? null,
    });
    if (!session) {
      throw new ServiceError('conflict', 'client_state_in_use', 'client_state has already been used in this tenant');
    }
    this.events.emit('session.created', { tenantId: tenant.id, sessionId: session.id, flow });
    return { clientState: session.clientState, biometryUrl: `${this.options.publicUrl}/capture?t=${token}`, token };
  }

  /** The tenant's session for this client_state, brought up to date if its link has expired. */
  byClientState(tenant: Tenant, clientState: string): Session {
    const session = this.sessions.byClientState(tenant.id, clientState);
    if (!session) throw new ServiceError('not_found', 'session_not_found', 'no session with this client_state');
    return this.#expireIfDue(session);
  }

  /**
   * The open session behind a capture token. Unknown tokens are 401; a link whose session has
   * ended (decided, expired or cancelled) is 410, so it can never be used twice.
   */
  byCaptureToken(token: string): Session {
    const hash = captureTokenHash(token);
    const found = hash && this.sessions.byTokenHash(hash);
    if (!found) throw new ServiceError('unauthorized', 'invalid_capture_token', 'this capture link is not valid');
    const session = this.#expireIfDue(found);
    if (session.status === 'expired') {
      throw new ServiceError('gone', 'capture_link_expired', 'this capture link has expired');
    }
    if (session.status !== 'pending' && session.status !== 'in_progress') {
      throw new ServiceError('gone', 'capture_link_used', 'this capture link has already been used');
    }
    return session;
  }

  /** The first use of the link: pending → in_progress. */
  bind(session: Session): Session {
    if (session.status === 'pending') this.sessions.bind(session.id);
    return this.sessions.byId(session.id) as Session;
  }

  /** Decides the session on the probe embedding and records the outcome. */
  decide(session: Session, probe: Float32Array): Session {
    return this.#finish(session, () => {
      const decision = decide(session, probe, this.users, this.index, this.options.thresholds);
      return { decision, after: decision.indexChange };
    });
  }

  /** Ends the session as failed without a biometric decision (no usable face, spoof, cancelled...). */
  fail(session: Session, reason: string): Session {
    return this.#finish(session, () => ({
      decision: { status: 'fail', reason, score: null, externalUserId: session.externalUserId },
    }));
  }

  /** Expires every open session whose link is past its lifetime (run periodically). */
  sweepExpired(): number {
    let n = 0;
    for (const session of this.sessions.dueForExpiry()) {
      if (this.#expireIfDue(session).status === 'expired') n++;
    }
    return n;
  }

  #expireIfDue(session: Session): Session {
    const open = session.status === 'pending' || session.status === 'in_progress';
    if (!open || Date.parse(session.expiresAt) > Date.now()) return session;
    return this.#finish(session, () => ({
      decision: { status: 'expired', reason: 'expired', score: null, externalUserId: session.externalUserId },
    }));
  }

  #finish(
    session: Session,
    run: () => {
      decision: { status: 'success' | 'fail' | 'expired'; reason: string | null; score: number | null; externalUserId: string | null };
      after?: { type: 'upsert'; externalUserId: string; embedding: Float32Array };
    },
  ): Session {
    const eventId = newEventId();
    const outcome = this.db.transaction(() => {
      const { decision, after } = run();
      const finished = this.sessions.finish(session.id, {
        status: decision.status,
        reason: decision.reason,
        score: decision.score,
        resultUserId: decision.externalUserId,
        eventId,
      });
      // another request finished it first: roll back whatever this decision wrote
      if (!finished) throw new AlreadyFinished();
      this.audit.record({
        id: eventId,
        tenantId: session.tenantId,
        type: 'session_finished',
        flow: session.flow,
        sessionId: session.id,
        externalUserId: decision.externalUserId,
        result: decision.status === 'success' ? 'success' : 'fail',
        reason: decision.reason,
        score: decision.score,
        factor: session.doorId ? session.factor : null,
      });
      return { decision, after };
    });
    let result: ReturnType<typeof outcome>;
    try {
      result = outcome();
    } catch (err) {
      if (err instanceof AlreadyFinished) return this.sessions.byId(session.id) as Session;
      throw err;
    }
    const { decision, after } = result;
    if (after) {
      this.index.of(session.tenantId).upsert(after.externalUserId, after.embedding);
      this.events.emit('user.changed', {
        tenantId: session.tenantId,
        externalUserId: after.externalUserId,
        change: session.flow === 'enroll' ? 'enrolled' : 'updated',
      });
    }
    this.events.emit('session.finished', {
      tenantId: session.tenantId,
      sessionId: session.id,
      flow: session.flow,
      status: decision.status,
      reason: decision.reason,
      externalUserId: decision.externalUserId,
      score: decision.score,
      eventId,
      doorId: session.doorId,
      clientState: session.clientState,
      factor: session.factor,
    });
    return this.sessions.byId(session.id) as Session;
  }
}

class AlreadyFinished extends Error {}

/** `redirect_url` with `client_state` added to its query. */
export function redirectTarget(session: Session): string {
  const url = new URL(session.redirectUrl);
  url.searchParams.set('client_state', session.clientState);
  return url.toString();
}
