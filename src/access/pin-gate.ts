import type { CoreEvents, EventBus } from '../core/events.ts';
import type { Logger } from '../core/logger.ts';
import type { DeviceConfig } from '../device/config.ts';
import { ServiceError } from '../errors.ts';
import type { AuditLog } from '../store/audit.ts';
import { PIN_FORMAT, type PinStore } from '../store/pins.ts';

/** Outcomes that mean the PIN, or the face behind it, was wrong (a policy denial means the PIN was right). */
const FAILED_FACTOR = new Set(['not_identified', 'ambiguous_match']);

/**
 * The PIN side of `face+pin` doors: who holds a typed PIN, and a per-door limit on failures. A
 * failure is a face+pin session at the door that did not identify anyone among the PIN's holders.
 * After `max_failures` within `window_seconds` the door refuses PINs for `lockout_seconds`; each
 * lockout is audited and raised as a door alarm, and every attempt is audited with its session.
 */
export class PinGate {
  readonly #failures = new Map<string, number[]>();
  readonly #lockedUntil = new Map<string, number>();
  readonly #unsubscribe: () => void;

  constructor(
    private readonly config: DeviceConfig,
    private readonly tenantId: string,
    private readonly pins: PinStore,
    private readonly audit: AuditLog,
    private readonly events: EventBus,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.#unsubscribe = events.on('session.finished', (e) => this.#finished(e));
  }

  /** The holders of `pin` in this device's tenant; refused while the door is locked out. */
  async holders(doorId: string, pin: string): Promise<string[]> {
    if (!PIN_FORMAT.test(pin)) throw new ServiceError('invalid_request', 'invalid_pin', 'a PIN is 4 to 8 digits');
    const until = this.#lockedUntil.get(doorId) ?? 0;
    const wait = Math.ceil((until - this.now()) / 1000);
    if (wait > 0) throw new ServiceError('too_many_requests', 'pin_locked', `too many failed attempts at this door: try again in ${wait} s`, wait);
    return this.pins.holders(this.tenantId, pin);
  }

  close(): void {
    this.#unsubscribe();
  }

  #finished(e: CoreEvents['session.finished']): void {
    if (e.factor !== 'face+pin' || !e.doorId || e.tenantId !== this.tenantId || e.status !== 'fail' || !FAILED_FACTOR.has(e.reason ?? '')) return;
    const { max_failures, window_seconds, lockout_seconds } = this.config.pin;
    const now = this.now();
    const recent = (this.#failures.get(e.doorId) ?? []).filter((t) => now - t < window_seconds * 1000);
    recent.push(now);
    this.#failures.set(e.doorId, recent);
    if (recent.length < max_failures) return;
    this.#failures.delete(e.doorId);
    this.#lockedUntil.set(e.doorId, now + lockout_seconds * 1000);
    const event = this.audit.record({ tenantId: this.tenantId, type: 'pin_lockout', flow: null, sessionId: e.sessionId, externalUserId: null, result: null, reason: 'too_many_failures', score: null, factor: 'face+pin', doorId: e.doorId });
    this.logger.warn({ door: e.doorId, failures: recent.length, lockout_seconds, event: event.id }, 'PIN entry locked at a door after repeated failures');
    this.events.emit('door.alarm', { eventId: event.id, doorId: e.doorId, type: 'pin_lockout', time: event.createdAt });
  }
}
