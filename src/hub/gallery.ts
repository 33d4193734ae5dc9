import type { GalleryIndex } from '../biometrics/gallery.ts';
import { KeyedQueue } from '../core/keyed-queue.ts';
import { EnvelopeError, openTemplate } from '../sync/envelope.ts';
import type { HubStore } from './store.ts';

/**
 * Keeps the hub's in-memory 1:N index level with the central store. Other hub processes and the
 * doors change it too, so before a decision the hub reads the tenant's log after the last change
 * it applied (one indexed query when nothing is new). The cursors are taken before the templates
 * are loaded: a change made in between is applied again, which leaves the same result.
 */
export class HubGallery {
  readonly #cursors = new Map<string, number>();
  /** One refresh of a tenant at a time: two interleaved could apply an older change last. */
  readonly #refreshing = new KeyedQueue();

  constructor(
    private readonly store: HubStore,
    private readonly tenantKey: (tenantId: string) => Promise<Buffer>,
    private readonly model: string,
  ) {}

  /** Remembers every tenant's head: call it before loading the templates. */
  async markHeads(): Promise<void> {
    for (const h of await this.store.heads()) this.#cursors.set(h.tenantId, h.seq);
  }

  /** Applies the tenant's changes after its cursor to `index`. */
  refresh(index: GalleryIndex, tenantId: string): Promise<void> {
    return this.#refreshing.run(tenantId, () => this.#refresh(index, tenantId));
  }

  async #refresh(index: GalleryIndex, tenantId: string): Promise<void> {
    let cursor = this.#cursors.get(tenantId) ?? 0;
    const gallery = index.of(tenantId);
    for (;;) {
      const changes = await this.store.changesAfter(tenantId, cursor, 500);
      if (changes.length === 0) break;
      for (const c of changes) {
        if (c.kind === 'user.delete') gallery.remove(c.external_user_id);
        if (c.kind === 'user.upsert') {
          try {
            const binding = { tenantId, externalUserId: c.external_user_id, version: c.version, model: c.model, keyVersion: c.key_version };
            gallery.upsert(c.external_user_id, openTemplate(await this.tenantKey(tenantId), c.template, binding, this.model));
          } catch (err) {
            if (!(err instanceof EnvelopeError)) throw err;
            gallery.remove(c.external_user_id); // made by another model, or unreadable: not matchable here
          }
        }
        cursor = c.seq;
      }
      this.#cursors.set(tenantId, cursor);
    }
  }
}
