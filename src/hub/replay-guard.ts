import type { SignedPurpose } from '../sync/signature.ts';
import type { SentMark } from '../sync/protocol.ts';

/**
 * Refuses a replay of a device's own signed message. Each message a device signs says when it was
 * sent (`sent`: the device's boot and a counter that grows with every message of that boot); the
 * hub takes a message only if it is newer than the last it took of that device for that purpose.
 * A broker client replaying a door's earlier request, state or batch is refused without costing
 * the door anything (its request rate counts only what is taken). What the hub took last is kept
 * while it runs; after a restart, messages of a boot older than the one the device last reported
 * are refused still (its state's `boot`, kept in PostgreSQL).
 *
 * The device's last will (`n` 0, signed when it connected) is the one message the broker sends
 * later than those signed after it: an offline state of the current boot is taken at 0.
 */
export class ReplayGuard {
  readonly #last = new Map<string, { boot: number; max: number; taken: Set<number> }>();

  /**
   * Whether the message is newer than the last taken of this device and purpose (and, if so, it is
   * the last now). `signingKey` names the device: one joined again under its name with new keys
   * starts afresh. A door's submissions and event batches, which the hub handles concurrently
   * and which say themselves what they are (a change_id, event ids), may be admitted out of
   * order: one up to REORDER_WINDOW behind the newest taken is taken once (an anti-replay window,
   * as IPsec's), an older one is refused. A state or a request is taken only if newer than the last.
   */
  take(signingKey: string, purpose: SignedPurpose, sent: SentMark, reportedBoot: number | null, lastWill = false): boolean {
    const key = `${signingKey}/${purpose}`;
    const last = this.#last.get(key);
    if (sent.boot < Math.max(reportedBoot ?? 0, last?.boot ?? 0)) return false;
    if (sent.n === 0) return lastWill;
    if (!last || sent.boot > last.boot) {
      this.#last.set(key, { boot: sent.boot, max: sent.n, taken: new Set([sent.n]) });
      return true;
    }
    const window = REORDERABLE.has(purpose) ? REORDER_WINDOW : 1;
    if (sent.n <= last.max - window || last.taken.has(sent.n)) return false;
    last.taken.add(sent.n);
    if (sent.n > last.max) {
      last.max = sent.n;
      for (const n of last.taken) if (n <= last.max - window) last.taken.delete(n);
    }
    return true;
  }
}

/** How far behind the newest submission or event batch of a device one may be taken (each is taken once). */
const REORDER_WINDOW = 256;
const REORDERABLE: ReadonlySet<SignedPurpose> = new Set(['submission', 'events']);
