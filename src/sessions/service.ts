import type { EventBus } from '../core/events.ts';
import { KeyedQueue } from '../core/keyed-queue.ts';
import { ServiceError } from '../errors.ts';
import type { GalleryIndex } from '../biometrics/gallery.ts';
import type { Embeddings, ModelId } from '../biometrics/matchers/index.ts';
import { newEventId } from '../store/audit.ts';
import type { BiometryStore, FleetWrite, UserWrite } from '../store/biometry-store.ts';
import type { Flow, Session } from '../store/sessions.ts';
import type { LivenessMode, Tenant } from '../store/tenants.ts';
import { drawChallenge } from '../liveness/challenge.ts';
import { type Decision, type Thresholds, decide } from './decisions.ts';
import { assertRedirectAllowed } from './origins.ts';
import { captureTokenHash, newCaptureToken } from './tokens.ts';

export interface SessionServiceOptions {
  publicUrl: string;
  ttlSeconds: number;
  thresholds: Thresholds;
  /**
   * Brings the tenant's 1:N index up to date before a decision (the hub: changes other hub
   * processes and devices committed to the central store since), and says up to which place of
   * the tenant's log it now is. A device's index is always current.
   */
  refreshGallery?: (tenantId: string) => Promise<number>;
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
 * What the fleet's hub said of an enrolment or update the door waited on: sequenced (at a
 * version); refused (the face is enrolled elsewhere in the fleet, the id already is, or the person
 * is not enrolled); changed (the person has a newer template at the hub: decide again on it); or
 * no answer in time.
 */
export type FleetVerdict =
  | { status: 'sequenced'; version: number }
  | { status: 'refused'; reason: 'conflict' | 'already_enrolled' | 'user_not_found'; score: number | null }
  | { status: 'changed' }
  | { status: 'unreachable' };
export type FleetCommit = (tenantId: string, write: FleetWrite) => Promise<FleetVerdict>;

/** How a session ends: a decision, or a failure or expiry without one. */
type Ending = Omit<Decision, 'status'> & { status: 'success' | 'fail' | 'expired' };

/** A decision that keeps meeting a user changed under it is given up after this many tries. */
const MAX_DECISION_ATTEMPTS = 3;

/**
 * Session lifecycle: creation with a single-use capture link, binding on first use, the final
 * decision, and expiry. Every way a session ends goes through `#finish`, which records the outcome,
 * its audit event and any enrolment in one transaction and then announces it. The sessions of a
 * tenant end one at a time, so two enrolments cannot both pass the 1:N duplicate check.
 */
export class SessionService {
  readonly #finishing = new KeyedQueue();
  #commitThroughHub: FleetCommit | null = null;

  constructor(
    private readonly store: BiometryStore,
    private readonly index: GalleryIndex,
    private readonly events: EventBus,
    private readonly options: SessionServiceOptions,
  ) {}

  /**
   * A fleet device: each enrolment and update is committed through the hub (its fleet-wide 1:N
   * duplicate check) before it succeeds here; without an answer in time it is made here and queued.
   */
  commitWritesThrough(commit: FleetCommit | null): void {
    this.#commitThroughHub = commit;
  }

  async create(tenant: Tenant, flow: Flow, input: NewSession, door?: DoorSessionOptions): Promise<{ clientState: string; biometryUrl: string; token: string }> {
    // the device's own sessions return to its own kiosk page, which no tenant needs to allow
    if (!door) assertRedirectAllowed(tenant.allowedOrigins, input.redirectUrl);
    const mode = door?.livenessMode ?? tenant.livenessMode;
    const { token, hash } = newCaptureToken();
    const session = await this.store.sessions.create({
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
  async byClientState(tenant: Tenant, clientState: string): Promise<Session> {
    const session = await this.store.sessions.byClientState(tenant.id, clientState);
    if (!session) throw new ServiceError('not_found', 'session_not_found', 'no session with this client_state');
    return this.#expireIfDue(session);
  }

  /**
   * The open session behind a capture token. Unknown tokens are 401; a link whose session has
   * ended (decided, expired or cancelled) is 410, so it can never be used twice.
   */
  async byCaptureToken(token: string): Promise<Session> {
    const hash = captureTokenHash(token);
    const found = hash && (await this.store.sessions.byTokenHash(hash));
    if (!found) throw new ServiceError('unauthorized', 'invalid_capture_token', 'this capture link is not valid');
    const session = await this.#expireIfDue(found);
    if (session.status === 'expired') {
      throw new ServiceError('gone', 'capture_link_expired', 'this capture link has expired');
    }
    if (session.status !== 'pending' && session.status !== 'in_progress') {
      throw new ServiceError('gone', 'capture_link_used', 'this capture link has already been used');
    }
    return session;
  }

  /** The first use of the link: pending → in_progress. */
  async bind(session: Session): Promise<Session> {
    // read again only when it changed (every frame of a capture passes here)
    if (session.status !== 'pending') return session;
    await this.store.sessions.bind(session.tenantId, session.id);
    return this.#reload(session);
  }

  /** Decides the session on the probe (an embedding per model) and records the outcome. */
  decide(session: Session, probe: Embeddings): Promise<Session> {
    return this.#finish(session, async () => {
      const checkedThrough = await this.options.refreshGallery?.(session.tenantId);
      const decision = await decide(session, probe, this.store.users, this.index, this.options.thresholds, { learnsFromCaptures: this.store.learnsFromCaptures });
      return decision.write && checkedThrough !== undefined ? { ...decision, write: { ...decision.write, checkedThrough } } : decision;
    });
  }

  /** Ends the session as failed without a biometric decision (no usable face, spoof, cancelled...). */
  fail(session: Session, reason: string): Promise<Session> {
    return this.#finish(session, async () => ({ status: 'fail', reason, score: null, externalUserId: session.externalUserId }));
  }

  /** Expires every open session whose link is past its lifetime (run periodically). */
  async sweepExpired(): Promise<number> {
    let n = 0;
    for (const session of await this.store.sessions.dueForExpiry()) {
      if ((await this.#expireIfDue(session)).status === 'expired') n++;
    }
    return n;
  }

  async #expireIfDue(session: Session): Promise<Session> {
    const open = session.status === 'pending' || session.status === 'in_progress';
    if (!open || Date.parse(session.expiresAt) > Date.now()) return session;
    return this.#finish(session, async () => ({ status: 'expired', reason: 'expired', score: null, externalUserId: session.externalUserId }));
  }

  async #reload(session: Session): Promise<Session> {
    return (await this.store.sessions.byId(session.tenantId, session.id)) as Session;
  }

  #finish(session: Session, run: () => Promise<Ending>): Promise<Session> {
    // only sessions that may write need to wait for each other (a door's identify never does)
    const writes = session.flow === 'enroll' || session.flow === 'update_embedding';
    return writes ? this.#finishing.run(session.tenantId, () => this.#finishNow(session, run)) : this.#finishNow(session, run);
  }

  async #finishNow(session: Session, run: () => Promise<Ending>): Promise<Session> {
    for (let attempt = 1; ; attempt++) {
      const eventId = newEventId();
      const decision: Ending | null =
        attempt <= MAX_DECISION_ATTEMPTS ? await this.#throughHub(session, await run()) : { status: 'fail', reason: 'conflict', score: null, externalUserId: session.externalUserId };
      // the person changed at the hub since this copy: decide again on the newer one
      if (decision === null) continue;
      const written = await this.store.finishSession(
        session,
        { status: decision.status, reason: decision.reason, score: decision.score, resultUserId: decision.externalUserId, eventId },
        {
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
        },
        decision.write,
      );
      // the user changed since the decision read it: decide again on what is there now
      if (written === 'write_conflict') continue;
      if (written === 'already_finished') return this.#reload(session);
      if (decision.write) await this.#announceWrite(session, decision.write);
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
      return this.#reload(session);
    }
  }

  /** An enrolment or update decided here, as the fleet's hub judges it (when this device is in a fleet); null: decide again. */
  async #throughHub(session: Session, decision: Ending): Promise<Ending | null> {
    const write = decision.write;
    // a migrated template stays on this door until its outbox sends it, a capture stays on it for good
    if (!write || write.kind === 'migrate' || write.kind === 'adapt' || !this.#commitThroughHub) return decision;
    const verdict = await this.#commitThroughHub(session.tenantId, write);
    switch (verdict.status) {
      case 'sequenced':
        return { ...decision, write: { ...write, version: verdict.version } };
      case 'refused':
        return { status: 'fail', reason: verdict.reason, score: verdict.score, externalUserId: session.externalUserId };
      case 'changed':
        return null;
      case 'unreachable':
        return decision;
    }
  }

  async #announceWrite(session: Session, write: UserWrite): Promise<void> {
    const externalUserId = write.kind === 'enroll' ? write.externalUserId : write.user.externalUserId;
    if (write.kind === 'adapt') {
      // the person's template is now the mean with this capture (or unchanged, when the store kept none)
      const user = await this.store.users.get(session.tenantId, externalUserId);
      if (user) this.index.of(session.tenantId).upsert(externalUserId, await this.store.users.templates(user));
      return;
    }
    this.index.of(session.tenantId).upsert(externalUserId, write.templates);
    if (write.kind === 'migrate') this.events.emit('template.migrated', { tenantId: session.tenantId, models: Object.keys(write.templates) as ModelId[] });
    else this.events.emit('user.changed', { tenantId: session.tenantId, externalUserId, change: write.kind === 'enroll' ? 'enrolled' : 'updated' });
  }
}

/** `redirect_url` with `client_state` added to its query. */
export function redirectTarget(session: Session): string {
  const url = new URL(session.redirectUrl);
  url.searchParams.set('client_state', session.clientState);
  return url.toString();
}
