import type { GalleryIndex } from '../biometrics/gallery.ts';
import type { EventBus } from '../core/events.ts';
import { ServiceError } from '../errors.ts';
import type { AuditLog } from '../store/audit.ts';
import type { Db } from '../store/database.ts';
import type { Tenant } from '../store/tenants.ts';
import type { User, UserStore } from '../store/users.ts';

export interface UserDetails extends User {
  templates: { version: number; active: boolean; createdAt: string }[];
}

/** The management side of enrolled users: list, look up, delete. Never exposes embeddings. */
export class UserService {
  constructor(
    private readonly db: Db,
    private readonly users: UserStore,
    private readonly audit: AuditLog,
    private readonly index: GalleryIndex,
    private readonly events: EventBus,
  ) {}

  list(tenant: Tenant, limit: number, offset: number): { total: number; users: User[] } {
    return this.users.list(tenant.id, limit, offset);
  }

  get(tenant: Tenant, externalUserId: string): UserDetails {
    const user = this.users.get(tenant.id, externalUserId);
    if (!user) throw new ServiceError('not_found', 'user_not_found', 'no enrolled user with this external_user_id');
    return { ...user, templates: this.users.templateVersions(user) };
  }

  /** Erases every template of the user (history included); the audit event stays, without biometrics. */
  delete(tenant: Tenant, externalUserId: string): { eventId: string } {
    const eventId = this.db.transaction(() => {
      if (!this.users.delete(tenant.id, externalUserId)) {
        throw new ServiceError('not_found', 'user_not_found', 'no enrolled user with this external_user_id');
      }
      return this.audit.record({
        tenantId: tenant.id,
        type: 'user_deleted',
        flow: null,
        sessionId: null,
        externalUserId,
        result: 'success',
        reason: null,
        score: null,
      }).id;
    })();
    this.index.of(tenant.id).remove(externalUserId);
    this.events.emit('user.changed', { tenantId: tenant.id, externalUserId, change: 'deleted' });
    return { eventId };
  }
}
