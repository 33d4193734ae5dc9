import type { GalleryIndex } from '../biometrics/gallery.ts';
import type { EventBus } from '../core/events.ts';
import { ServiceError } from '../errors.ts';
import type { AuditInput, BiometryStore } from '../store/biometry-store.ts';
import type { Tenant } from '../store/tenants.ts';
import type { User } from '../store/users.ts';
import { PIN_FORMAT } from '../store/pins.ts';

/**
 * Where a tenant's PINs are set: a standalone device's own store (store/pins.ts), or the fleet's log
 * (a fleet door through the hub, sync/fleet-pins.ts; the hub itself, hub/pins.ts).
 */
export interface PinKeeper {
  set(tenantId: string, externalUserId: string, pin: string): Promise<void>;
  /** False: the person had no PIN. */
  remove(tenantId: string, externalUserId: string): boolean | Promise<boolean>;
}

export interface UserDetails extends User {
  templates: { version: number; active: boolean; createdAt: string }[];
}

/** The management side of enrolled users: list, look up, delete. Never exposes embeddings. */
export class UserService {
  constructor(
    private readonly store: BiometryStore,
    private readonly index: GalleryIndex,
    private readonly events: EventBus,
    /** Where face+pin doors' PINs are set (null: nowhere here). */
    private pins: PinKeeper | null,
  ) {}

  /** From now on PINs are set with `keeper` (a device that joined a fleet sets them through the hub). */
  keepPinsWith(keeper: PinKeeper): void {
    this.pins = keeper;
  }

  list(tenant: Tenant, limit: number, offset: number): Promise<{ total: number; users: User[] }> {
    return this.store.users.list(tenant.id, limit, offset);
  }

  async get(tenant: Tenant, externalUserId: string): Promise<UserDetails> {
    const user = await this.store.users.get(tenant.id, externalUserId);
    if (!user) throw new ServiceError('not_found', 'user_not_found', 'no enrolled user with this external_user_id');
    return { ...user, templates: await this.store.users.templateVersions(user) };
  }

  /**
   * Erases every template of the user (history included) and their identifier from every stored
   * row; the audit trail keeps a pseudonym, never biometrics.
   */
  async delete(tenant: Tenant, externalUserId: string): Promise<{ eventId: string }> {
    const eventId = await this.store.eraseUser(tenant.id, externalUserId, (pseudonym) => ({
      tenantId: tenant.id,
      type: 'user_deleted',
      flow: null,
      sessionId: null,
      externalUserId: pseudonym,
      result: 'success',
      reason: null,
      score: null,
    }));
    if (!eventId) throw new ServiceError('not_found', 'user_not_found', 'no enrolled user with this external_user_id');
    this.index.of(tenant.id).remove(externalUserId);
    this.events.emit('user.changed', { tenantId: tenant.id, externalUserId, change: 'deleted' });
    return { eventId };
  }

  /**
   * Gives an enrolled user the PIN of `face+pin` doors (replacing any earlier one). Stored only as
   * a salted scrypt hash; PINs anyone could guess first (one digit repeated, a straight run) are refused.
   */
  async setPin(tenant: Tenant, externalUserId: string, pin: string): Promise<{ eventId: string }> {
    assertUsablePin(pin);
    const pins = this.#pins();
    await this.get(tenant, externalUserId);
    await pins.set(tenant.id, externalUserId, pin);
    return { eventId: await this.#audit(tenant, externalUserId, 'pin_set') };
  }

  async removePin(tenant: Tenant, externalUserId: string): Promise<{ eventId: string }> {
    if (!(await this.#pins().remove(tenant.id, externalUserId))) throw new ServiceError('not_found', 'pin_not_found', 'this user has no PIN');
    return { eventId: await this.#audit(tenant, externalUserId, 'pin_removed') };
  }

  #pins(): PinKeeper {
    if (!this.pins) throw new ServiceError('not_found', 'pins_not_here', 'PINs are set on the device whose doors ask for them');
    return this.pins;
  }

  async #audit(tenant: Tenant, externalUserId: string, type: 'pin_set' | 'pin_removed'): Promise<string> {
    const event: AuditInput = { tenantId: tenant.id, type, flow: null, sessionId: null, externalUserId, result: 'success', reason: null, score: null };
    return (await this.store.audit.record(event)).id;
  }
}

/** Refuses a PIN that is not 4 to 8 digits, or that anyone could guess first. */
export function assertUsablePin(pin: string): void {
  if (!PIN_FORMAT.test(pin)) throw new ServiceError('invalid_request', 'invalid_pin', 'a PIN is 4 to 8 digits');
  if (guessable(pin)) throw new ServiceError('invalid_request', 'weak_pin', 'choose a PIN that is not one digit repeated or a run such as 1234 or 9876');
}

/** One digit repeated, or each digit one more (or one less) than the one before. */
export function guessable(pin: string): boolean {
  const d = [...pin].map(Number);
  const steps = new Set(d.slice(1).map((x, i) => (x - d[i] + 10) % 10));
  return steps.size === 1 && [0, 1, 9].includes([...steps][0]);
}
