import type { ConflictResolution } from '../hub/conflicts.ts';
import type { SignInThrottle } from './signin-throttle.ts';
import type { ModelId } from '../biometrics/matchers/index.ts';

/**
 * What the admin console reads and does, behind one interface with two implementations: the hub's
 * (PostgreSQL: every device of every tenant) and a standalone device's (SQLite: itself only). The
 * console's pages and routes know nothing else.
 */

export interface ConsoleTenant {
  id: string;
  name: string;
}

export interface ConsoleDevice {
  deviceId: string;
  state: 'online' | 'offline' | 'revoked' | 'never_seen';
  /** Changes of the tenant's log the device has not applied yet (null: not in a fleet). */
  lag: number | null;
  diverged: boolean;
  version: string | null;
  model: string | null;
  lastSeen: string | null;
  users: number | null;
}

export interface ModelCoverage {
  people: number;
  byModel: Partial<Record<ModelId, number>>;
}

export interface ConsoleDoor {
  deviceId: string;
  doorId: string;
}

export interface ConsoleEvent {
  id: string;
  deviceId: string;
  doorId: string | null;
  /** access_decision, remote_unlock, door_alarm, or an audit event type (enroll, identify, …). */
  type: string;
  result: string | null;
  reason: string | null;
  externalUserId: string | null;
  time: string;
}

export interface ConsolePerson {
  externalUserId: string;
  version: number;
  groups: string[];
  updatedAt: string;
  /** The devices that hold this version (they applied the change that made it). */
  heldBy: string[];
  /** Whether the person has a PIN for face+pin doors. */
  pin: boolean;
}

export interface ConsoleErasure {
  /** The person's id while the tombstone keeps it (the log's retention). */
  externalUserId: string;
  applied: number;
  devices: number;
  complete: boolean;
}

export interface ConsoleConflict {
  changeId: string;
  origin: string;
  externalUserId: string;
  reason: string;
}

export interface ActivityFilter {
  door?: string;
  person?: string;
  from?: string;
  to?: string;
  limit: number;
}

export interface ConsoleAdmin {
  name: string;
  passwordHash: string;
}

export interface ConsoleSession {
  admin: string;
  csrf: string;
  expiresAt: string;
}

export interface ConsoleSource {
  /** `hub`: the fleet; `device`: this device only. */
  readonly scope: 'hub' | 'device';
  tenants(): Promise<ConsoleTenant[]>;
  devices(tenantId: string): Promise<ConsoleDevice[]>;
  /** The tenant's live people, and how many hold a template of each model (the move to a new model). */
  modelCoverage(tenantId: string): Promise<ModelCoverage>;
  doors(tenantId: string): Promise<ConsoleDoor[]>;
  /** Door events (decisions, openings, alarms) after `since` (ISO time), oldest first (the live feed polls this). */
  doorEventsSince(tenantId: string, since: string, limit: number): Promise<ConsoleEvent[]>;
  unlock(tenantId: string, deviceId: string, doorId: string): Promise<{ ok: boolean; error: string | null }>;
  /** Shows an enroll or update session's capture link (made on that device) on the door's kiosk screen. */
  openSession(tenantId: string, deviceId: string, doorId: string, biometryUrl: string): Promise<{ ok: boolean; error: string | null }>;
  people(tenantId: string, query: string, limit: number): Promise<{ people: ConsolePerson[]; total: number }>;
  erasures(tenantId: string): Promise<ConsoleErasure[]>;
  conflicts(tenantId: string): Promise<ConsoleConflict[]>;
  /** Ends a conflict as an admin decided (hub/conflicts.ts); `error` says why it could not be. */
  resolveConflict(tenantId: string, changeId: string, resolution: ConflictResolution, admin: string): Promise<{ error: string | null }>;
  /** Sets (null: removes) a person's PIN, audited with the admin's name; `error` says why it could not be. */
  setPin(tenantId: string, externalUserId: string, pin: string | null, admin: string): Promise<{ error: string | null }>;
  /** Door events and the audit trail, newest first. */
  activity(tenantId: string, filter: ActivityFilter): Promise<ConsoleEvent[]>;
  admin(name: string): Promise<ConsoleAdmin | null>;
  /** Failed sign-ins per name and address (PostgreSQL at the hub, shared by its processes). */
  readonly signIns: SignInThrottle;
  createSession(tokenHash: Buffer, session: ConsoleSession): Promise<void>;
  session(tokenHash: Buffer): Promise<ConsoleSession | null>;
  deleteSession(tokenHash: Buffer): Promise<void>;
}
