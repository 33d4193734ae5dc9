import type { GalleryIndex } from '../biometrics/gallery.ts';
import type { EventBus } from '../core/events.ts';
import { ServiceError } from '../errors.ts';
import type { Store } from '../store/index.ts';
import type { Tenant } from '../store/tenants.ts';
import type { User } from '../store/users.ts';
import { PIN_FORMAT } from '../store/pins.ts';

export interface UserDetails extends User {
  templates: { version: number; active: boolean; createdAt: string }[];
}

/** The management side of enrolled users: list, look up, delete. Never exposes embeddings. */
export class UserService {
  constructor(
    private readonly store: Pick<Store, 'users' | 'audit' | 'eraseUser' | 'pins'>,
    private readonly index: GalleryIndex,
    private readonly events: EventBus,
  ) {}

  list(tenant: Tenant, limit: number, offset: number): { total: number; users: User[] } {
    return this.store.users.list(tenant.id, limit, offset);
  }

  get(tenant: Tenant, externalUserId: string): UserDetails {
    const user = this.store.users.get(tenant.id, externalUserId);
    if (!user) throw new ServiceError('not_found', 'user_not_found', 'no enrolled user with this external_user_id');
    return { ...user, templates: this.store.users.templateVersions(user) };
  }

  /**
   * Erases every template of the user (history included) and their identifier from every stored
   * row; the audit trail keeps a pseudonym, never biometrics.
   */
  delete(tenant: Tenant, externalUserId: string): { eventId: string } {
    const eventId = this.store.eraseUser(
      tenant.id,
      externalUserId,
      (pseudonym) =>
        this.store.audit.record({
          tenantId: tenant.id,
          type: 'user_deleted',
          flow: null,
          sessionId: null,
          externalUserId: pseudonym,
          result: 'success',
          reason: null,
          score: null,
        }).id,
    );
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
    if (!PIN_FORMAT.test(pin)) throw new ServiceError('invalid_request', 'invalid_pin', 'a PIN is 4 to 8 digits');
    if (guessable(pin)) throw new ServiceError('invalid_request', 'weak_pin', 'choose a PIN that is not one digit repeated or a run such as 1234 or 9876');
    this.get(tenant, externalUserId);
    await this.store.pins.set(tenant.id, externalUserId, pin);
    return { eventId: this.#audit(tenant, externalUserId, 'pin_set') };
  }

  removePin(tenant: Tenant, externalUserId: string): { eventId: string } {
    if (!this.store.pins.remove(tenant.id, externalUserId)) throw new ServiceError('not_found', 'pin_not_found', 'this user has no PIN');
    return { eventId: this.#audit(tenant, externalUserId, 'pin_removed') };
  }

  #audit(tenant: Tenant, externalUserId: string, type: 'pin_set' | 'pin_removed'): string {
    return this.store.audit.record({ tenantId: tenant.id, type, flow: null, sessionId: null, externalUserId, result: 'success', reason: null, score: null }).id;
  }
}

/** One digit repeated, or each digit one more (or one less) than the one before. */
export function guessable(pin: string): boolean {
  const d = [...pin].map(Number);
  const steps = new Set(d.slice(1).map((x, i) => (x - d[i] + 10) % 10));
  return steps.size === 1 && [0, 1, 9].includes([...steps][0]);
}
