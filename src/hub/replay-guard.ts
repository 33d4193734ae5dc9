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
  readonly #last = new Map<string, SentMark>();

  /**
   * Whether the message is newer than the last taken of this device and purpose (and, if so, it is
   * the last now). `signingKey` names the device: one joined again under its name with new keys
   * starts afresh.
   */
  take(signingKey: string, purpose: SignedPurpose, sent: SentMark, reportedBoot: number | null, lastWill = false): boolean {
    const key = `${signingKey}/${purpose}`;
    const last = this.#last.get(key);
    if (sent.boot < Math.max(reportedBoot ?? 0, last?.boot ?? 0)) return false;
    if (sent.n === 0) return lastWill;
    if (last && sent.boot === last.boot && sent.n <= last.n) return false;
    this.#last.set(key, sent);
    return true;
  }
}
