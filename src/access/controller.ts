import type { AccessEvent, CoreEvents, DoorStatus, EventBus } from '../core/events.ts';
import { type Logger, loggableError } from '../core/logger.ts';
import type { DeviceConfig, DoorConfig } from '../device/config.ts';
import type { ServiceState } from '../device/out-of-service.ts';
import { ServiceError } from '../errors.ts';
import type { AuditLog } from '../store/audit.ts';
import type { DoorContact, DoorDrivers, DoorHardware, Relay } from './hardware.ts';
import { type MemberOf, type PolicyDenial, checkPolicy } from './policy.ts';

/** Grace after a granted pulse in which opening the door is expected (not forced). */
const OPEN_GRACE_MS = 5000;

interface DoorState {
  config: DoorConfig;
  relay: Relay;
  contact: DoorContact | null;
  /** When the relay was last released for a legitimate opening (monotonic clock: NTP may step the wall clock). */
  releasedAt: number;
  /** Between a release and the end of its pulse (set by the lock timer, never derived from a clock). */
  unlocked: boolean;
  heldTimer: NodeJS.Timeout | undefined;
  /** When the released relay locks again. */
  lockTimer: NodeJS.Timeout | undefined;
  /** external_user_id → when they were last granted here (the cool-down). */
  recent: Map<string, number>;
}

/**
 * Door control: subscribes to finished kiosk/turnstile sessions, applies each door's policy,
 * pulses its relay, watches its contact, and announces every decision and alarm on the event bus
 * (MQTT and the kiosk screen subscribe). Every decision is also in the audit log.
 */
export class AccessController {
  readonly #doors = new Map<string, DoorState>();
  readonly #unsubscribe: () => void;

  constructor(
    private readonly config: DeviceConfig,
    private readonly hardware: DoorHardware,
    private readonly tenantId: string,
    private readonly audit: AuditLog,
    private readonly events: EventBus,
    private readonly logger: Logger,
    private readonly memberOf: MemberOf,
    /** Out of service (the hub revoked the device), no door opens, for anyone. */
    private readonly state: ServiceState,
  ) {
    for (const door of config.doors) {
      const { relay, contact } = hardware.get(door.id) as DoorDrivers;
      const state: DoorState = { config: door, relay, contact, releasedAt: -Infinity, unlocked: false, heldTimer: undefined, lockTimer: undefined, recent: new Map() };
      contact?.onChange((open) => this.#contactChanged(state, open));
      this.#doors.set(door.id, state);
    }
    this.#unsubscribe = events.on('session.finished', (e) => this.#sessionFinished(e));
  }

  door(id: string): DoorState | undefined {
    return this.#doors.get(id);
  }

  /** What each door is now (its lock, its contact). */
  statuses(): DoorStatus[] {
    return [...this.#doors.values()].map((d) => this.#status(d));
  }

  #status(door: DoorState): DoorStatus {
    return { doorId: door.config.id, lock: door.unlocked ? 'unlocked' : 'locked', contact: door.contact ? (door.contact.isOpen() ? 'open' : 'closed') : null, time: new Date().toISOString() };
  }


  /** Opens a door on an operator's command (MQTT or local API). */
  unlock(doorId: string, source: string): AccessEvent | null {
    const door = this.#doors.get(doorId);
    if (!door) return null;
    const out = this.state.outOfService;
    if (out) throw new ServiceError('forbidden', out.code, out.message);
    this.#release(door);
    const event = this.#record(door, 'remote_unlock', { sessionId: null, clientState: null, result: 'granted', reason: 'remote_unlock', externalUserId: null, score: null, factor: null });
    this.logger.info({ door: doorId, source, event: event.eventId }, 'door unlocked remotely');
    return event;
  }

  /** Stops listening; the hardware is closed by whoever opened it. */
  close(): void {
    this.#unsubscribe();
    for (const d of this.#doors.values()) {
      clearTimeout(d.heldTimer);
      clearTimeout(d.lockTimer);
    }
  }

  #sessionFinished(e: CoreEvents['session.finished']): void {
    if (!e.doorId || e.tenantId !== this.tenantId || e.flow !== 'identify') return;
    const door = this.#doors.get(e.doorId);
    if (!door) return;
    const now = Date.now();
    let result: 'granted' | 'denied' = 'denied';
    let reason = e.reason;
    const out = this.state.outOfService;
    if (out) reason = out.code;
    else if (e.status === 'success' && e.externalUserId) {
      const last = door.recent.get(e.externalUserId);
      if (last !== undefined && now - last < this.config.kiosk.cooldown_seconds * 1000) {
        this.logger.debug({ door: door.config.id }, 'same person again within the cool-down: not processed');
        return;
      }
      const denial = this.#policy(door, e.externalUserId, now);
      if (denial) {
        reason = denial;
        this.logger.info({ door: door.config.id, reason: denial, session: e.sessionId }, 'access denied by policy');
      } else {
        result = 'granted';
        door.recent.set(e.externalUserId, now);
        this.#release(door);
      }
    }
    this.#record(door, 'access_decision', { sessionId: e.sessionId, clientState: e.clientState, result, reason, externalUserId: e.externalUserId, score: e.score, factor: e.factor });
  }

  /** The door's policy; a policy that cannot be evaluated denies (`policy_error`), it never opens. */
  #policy(door: DoorState, externalUserId: string, now: number): PolicyDenial | 'policy_error' | null {
    try {
      return checkPolicy(this.memberOf, door.config, externalUserId, new Date(now));
    } catch (err) {
      this.logger.error({ door: door.config.id, err: loggableError(err) }, 'access policy failed: denied');
      return 'policy_error';
    }
  }

  #release(door: DoorState): void {
    door.releasedAt = performance.now();
    door.unlocked = true;
    door.relay.pulse(door.config.relay.pulse_ms);
    this.events.emit('door.state', this.#status(door));
    // the relay locks again at the end of the pulse (a pulse in the meantime extends it)
    clearTimeout(door.lockTimer);
    door.lockTimer = setTimeout(() => {
      door.unlocked = false;
      this.events.emit('door.state', this.#status(door));
    }, door.config.relay.pulse_ms);
    door.lockTimer.unref();
  }

  #record(door: DoorState, type: 'access_decision' | 'remote_unlock', d: Omit<AccessEvent, 'eventId' | 'doorId' | 'time'>): AccessEvent {
    const audit = this.audit.record({
      tenantId: this.tenantId,
      type,
      flow: d.sessionId ? 'identify' : null,
      sessionId: d.sessionId,
      externalUserId: d.externalUserId,
      result: d.result,
      reason: d.reason,
      score: d.score,
      factor: d.factor,
      doorId: door.config.id,
    });
    const event: AccessEvent = { eventId: audit.id, doorId: door.config.id, time: audit.createdAt, ...d };
    this.events.emit('access.decided', event);
    return event;
  }

  #contactChanged(door: DoorState, open: boolean): void {
    this.events.emit('door.state', this.#status(door));
    clearTimeout(door.heldTimer);
    if (!open) return;
    const expected = performance.now() - door.releasedAt <= door.config.relay.pulse_ms + OPEN_GRACE_MS;
    if (!expected) this.#alarm(door, 'door_forced');
    const held = (door.config.contact?.held_open_seconds ?? 30) * 1000;
    door.heldTimer = setTimeout(() => this.#alarm(door, 'door_held_open'), held);
    door.heldTimer.unref();
  }

  #alarm(door: DoorState, type: 'door_forced' | 'door_held_open'): void {
    const audit = this.audit.record({ tenantId: this.tenantId, type: 'door_alarm', flow: null, sessionId: null, externalUserId: null, result: null, reason: type, score: null, doorId: door.config.id });
    this.logger.warn({ door: door.config.id, alarm: type, event: audit.id }, 'door alarm');
    this.events.emit('door.alarm', { eventId: audit.id, doorId: door.config.id, type, time: audit.createdAt });
  }
}
