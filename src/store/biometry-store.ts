import type { Embeddings, ModelId } from '../biometrics/matchers/index.ts';
import type { AuditEvent } from './audit.ts';
import type { Flow, Session, SessionOutcome } from './sessions.ts';
import type { LivenessMode, Tenant } from './tenants.ts';
import type { ActiveTemplate, User } from './users.ts';

/**
 * What the /biometry/v1 API, the capture page and the kiosk need of a store. Two implementations
 * pass one contract suite (test/store-contract.test.ts): SQLite on a device (src/store/sqlite-biometry.ts)
 * and PostgreSQL at the hub (src/hub/biometry-store.ts). Everything is async so that either can
 * sit behind it; the device's own machinery (fleet replica, PINs, backups) keeps the synchronous
 * SQLite store it was written against.
 */
export interface BiometryStore {
  /** The models whose templates this store keeps (a write's templates of other models are not stored). */
  readonly models: readonly ModelId[];
  /**
   * Whether a capture that verified or identified a person strongly may add to their templates
   * (`migrate`, `adapt`): a door's store does; the hub's keeps what enrolment and update made.
   */
  readonly learnsFromCaptures: boolean;
  readonly tenants: TenantAccess;
  readonly sessions: SessionAccess;
  readonly users: UserAccess;
  readonly audit: AuditAccess;
  /**
   * Ends a session once, in one transaction: the outcome, its audit event, and the enrolment or
   * template update it decided (if any). `already_finished`: another request ended it first and
   * nothing was written. `write_conflict`: the user changed since the decision read it (enrolled
   * meanwhile, or a newer template); nothing was written, and the caller decides again.
   */
  finishSession(session: Session, outcome: SessionOutcome, audit: AuditInput, write?: UserWrite): Promise<FinishResult>;
  /**
   * Deletes a user's templates and every trace of their identifier, and records `audit(pseudonym)`
   * in the same transaction; returns the audit event's id, or null when there is no such user.
   */
  eraseUser(tenantId: string, externalUserId: string, audit: (pseudonym: string) => AuditInput): Promise<string | null>;
  /** Removes finished sessions and audit events older than `cutoff` (retention). */
  purgeBefore(cutoff: string): Promise<{ sessions: number; auditEvents: number }>;
}

export interface TenantAccess {
  /** `id`: a fleet member takes its tenant's id from the hub; otherwise one is drawn. */
  create(input: { name: string; allowedOrigins: string[]; livenessMode: LivenessMode; padThreshold?: number; id?: string }): Promise<Tenant>;
  get(id: string): Promise<Tenant | undefined>;
  /** The returned `apiKey` is the only time the key is visible: only its hash is stored. */
  createKey(tenantId: string): Promise<{ keyId: string; apiKey: string }>;
  revokeKey(keyId: string): Promise<boolean>;
  findByApiKey(apiKey: string): Promise<Tenant | undefined>;
}

export interface NewSessionRow {
  tenantId: string;
  clientState: string;
  flow: Flow;
  externalUserId: string | null;
  redirectUrl: string;
  tokenHash: Buffer;
  ttlSeconds: number;
  challenge: Session['challenge'];
  doorId?: string | null;
  /** Identify among these users only (the holders of the PIN typed at a face+pin door). */
  candidates?: string[] | null;
}

export interface SessionAccess {
  /** Inserts a pending session; undefined when the client_state is taken in this tenant. */
  create(input: NewSessionRow): Promise<Session | undefined>;
  byId(tenantId: string, id: string): Promise<Session | undefined>;
  byClientState(tenantId: string, clientState: string): Promise<Session | undefined>;
  byTokenHash(tokenHash: Buffer): Promise<Session | undefined>;
  /** pending → in_progress on the first use of the capture link; false if it was already bound. */
  bind(tenantId: string, id: string): Promise<boolean>;
  /** Open sessions whose link has expired (oldest first). */
  dueForExpiry(limit?: number): Promise<Session[]>;
}

export interface UserAccess {
  /** The live (not deleted) user, if any. */
  get(tenantId: string, externalUserId: string): Promise<User | undefined>;
  list(tenantId: string, limit: number, offset: number): Promise<{ total: number; users: User[] }>;
  /** The user's usable active template of each model (empty: none opens, they must enrol again). */
  templates(user: User): Promise<Embeddings>;
  templateVersions(user: User): Promise<{ version: number; active: boolean; createdAt: string }[]>;
  /** Every usable active template of every tenant, one row per person and model, for the in-memory 1:N index. */
  activeTemplates(): Promise<ActiveTemplate[]>;
}

export type AuditInput = Omit<AuditEvent, 'createdAt' | 'id' | 'factor' | 'doorId'> & { id?: string; factor?: AuditEvent['factor']; doorId?: string | null };

export interface AuditAccess {
  record(event: AuditInput): Promise<AuditEvent>;
  list(tenantId: string, limit?: number): Promise<AuditEvent[]>;
}

/**
 * The enrolment, template update or template migration a decision makes, with a template of each
 * model the capture described the face with. `update` and `migrate` hold the user as the decision
 * read it. `migrate` adds the templates of models the person has none of, at the same version:
 * the person did not change, their face is now also described by a newer model. `version`: the
 * fleet's hub already sequenced this enrolment or update at that version (the door waited on it),
 * so it may have arrived through the log first, which is not a conflict. `adapt` keeps the capture
 * (one model's embedding) as a further capture beside the person's enrolment template, at the same
 * version; a store that keeps no captures (the hub) ignores it, as it ignores `migrate`.
 */
export type UserWrite = (
  | { kind: 'enroll'; externalUserId: string; templates: Embeddings; version?: number }
  | { kind: 'update'; user: User; templates: Embeddings; version?: number }
  | { kind: 'migrate'; user: User; templates: Embeddings }
  | { kind: 'adapt'; user: User; templates: Embeddings }
) & {
  /**
   * The hub: the place in the tenant's log its 1:N index had reached when the decision was made.
   * A template sequenced after it (by another hub process, or a door) was not compared, so the
   * write is refused as a `write_conflict` and decided again. A device's index is always current.
   */
  checkedThrough?: number;
};

/** What a fleet door commits through the hub: an enrolment or an update (a migrated template stays on the door). */
export type FleetWrite = Extract<UserWrite, { kind: 'enroll' | 'update' }>;

export type FinishResult = 'finished' | 'already_finished' | 'write_conflict';
