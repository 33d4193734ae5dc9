import type { GalleryIndex } from '../biometrics/gallery.ts';
import type { EventBus } from '../core/events.ts';
import { ServiceError } from '../errors.ts';
import type { Store } from '../store/index.ts';
import type { Tenant } from '../store/tenants.ts';
import type { User } from '../store/users.ts';

export interface UserDetails extends User {
  templates: { version: number; active: boolean; createdAt: string }[];
}

/** The management side of enrolled users: list, look up, delete. Never exposes embeddings. */
export class UserService {
  constructor(
    private readonly store: Pick<Store, 'users' | 'audit' | 'eraseUser'>,
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
}
