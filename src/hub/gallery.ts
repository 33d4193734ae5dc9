import type { GalleryIndex, TenantGallery } from '../biometrics/gallery.ts';
import type { ModelId } from '../biometrics/matchers/index.ts';
import { KeyedQueue } from '../core/keyed-queue.ts';
import { EnvelopeError, openTemplate } from '../sync/envelope.ts';
import type { SnapshotUser } from '../sync/protocol.ts';
import type { HubStore } from './store.ts';

/** People read per query when the index is reloaded. */
const RELOAD_CHUNK = 1000;

/**
 * Keeps the hub's in-memory 1:N index level with the central store. Other hub processes and the
 * doors change it too, so before a decision the hub reads the tenant's log after the last change
 * it applied (one indexed query when nothing is new). When that part of the log was compacted away,
 * it reloads the tenant's people instead. The cursors are taken before the templates
 * are loaded: a change made in between is applied again, which leaves the same result.
 */
export class HubGallery {
  readonly #cursors = new Map<string, number>();
  /** One refresh of a tenant at a time: two interleaved could apply an older change last. */
  readonly #refreshing = new KeyedQueue();

  constructor(
    private readonly store: HubStore,
    private readonly tenantKey: (tenantId: string, keyVersion: number) => Promise<{ key: Buffer } | undefined>,
    private readonly model: ModelId,
  ) {}

  /** Remembers every tenant's head: call it before loading the templates. */
  async markHeads(): Promise<void> {
    for (const h of await this.store.heads()) this.#cursors.set(h.tenantId, h.seq);
  }

  /** Applies the tenant's changes after its cursor to `index`; returns the cursor (the last change applied). */
  refresh(index: GalleryIndex, tenantId: string): Promise<number> {
    return this.#refreshing.run(tenantId, () => this.#refresh(index, tenantId));
  }

  async #refresh(index: GalleryIndex, tenantId: string): Promise<number> {
    let cursor = this.#cursors.get(tenantId) ?? 0;
    const gallery = index.of(tenantId);
    // the changes after the cursor are gone (retention): a deletion among them would be missed
    if (cursor < (await this.store.compactedSeq(tenantId))) cursor = await this.#reload(gallery, tenantId);
    for (;;) {
      const changes = await this.store.changesAfter(tenantId, cursor, 500);
      if (changes.length === 0) break;
      for (const c of changes) {
        if (c.kind === 'user.delete') gallery.remove(c.external_user_id);
        if (c.kind === 'user.upsert') await this.#upsert(gallery, tenantId, c);
        cursor = c.seq;
      }
      this.#cursors.set(tenantId, cursor);
    }
    return cursor;
  }

  /** Loads the tenant's people as they are now, like a device's snapshot; returns the head it resumes the log from. */
  async #reload(gallery: TenantGallery, tenantId: string): Promise<number> {
    const live = new Set<string>();
    let head: number | undefined;
    let after: string | null = null;
    do {
      const chunk = await this.store.snapshotChunk(tenantId, after, RELOAD_CHUNK);
      head ??= chunk.seq;
      for (const u of chunk.users) {
        live.add(u.external_user_id);
        await this.#upsert(gallery, tenantId, u);
      }
      after = chunk.next;
    } while (after !== null);
    for (const id of gallery.ids()) if (!live.has(id)) gallery.remove(id);
    this.#cursors.set(tenantId, head);
    return head;
  }

  async #upsert(gallery: TenantGallery, tenantId: string, u: SnapshotUser): Promise<void> {
    try {
      const binding = { tenantId, externalUserId: u.external_user_id, version: u.version, model: u.model, keyVersion: u.key_version };
      const sealedWith = await this.tenantKey(tenantId, u.key_version);
      if (!sealedWith) throw new EnvelopeError('wrong_key', `no key version ${u.key_version} in tenant ${tenantId}`);
      gallery.upsert(u.external_user_id, { [this.model]: openTemplate(sealedWith.key, u.template, binding, this.model) });
    } catch (err) {
      if (!(err instanceof EnvelopeError)) throw err;
      gallery.remove(u.external_user_id); // made by another model, or unreadable: not matchable here
    }
  }
}
