import crypto from 'node:crypto';
import type { EventBus } from '../core/events.ts';
import { type DeviceConfig, type DoorConfig, doorLiveness } from '../device/config.ts';
import type { ServiceState } from '../device/out-of-service.ts';
import { ServiceError } from '../errors.ts';
import type { SessionService } from '../sessions/service.ts';
import type { Factor } from '../store/sessions.ts';
import type { Tenant } from '../store/tenants.ts';
import type { PinGate } from './pin-gate.ts';

/**
 * The device's own sessions: an identify session for a door each time someone walks up to the
 * kiosk (or the turnstile camera sees a face), and integrator sessions pushed to a door's screen
 * for enrolment at the device. Kiosk sessions go through the same engine, liveness and audit
 * log as API sessions.
 */
export class KioskService {
  constructor(
    private readonly config: DeviceConfig,
    /** The device's tenant as it is now (a fleet door's changes with the hub's log). */
    private readonly tenantNow: () => Tenant,
    private readonly sessions: SessionService,
    private readonly events: EventBus,
    private readonly publicUrl: string,
    private readonly pins: PinGate,
    private readonly state: ServiceState,
    /** Resolves when the door may decide: a fleet door first applies what it missed while offline. */
    private readonly readyToDecide: () => Promise<unknown> = () => Promise.resolve(),
  ) {}

  /** A revoked device starts no session and shows none (device/out-of-service.ts). */
  #assertInService(): void {
    const out = this.state.outOfService;
    if (out) throw new ServiceError('forbidden', out.code, out.message);
  }

  /** The door's liveness mode now (device/config.ts, doorLiveness). */
  liveness(door: DoorConfig): 'active' | 'passive' {
    return doorLiveness(this.config, door, this.tenantNow().livenessMode);
  }

  door(doorId: string): DoorConfig {
    const door = this.config.doors.find((d) => d.id === doorId);
    if (!door) throw new ServiceError('not_found', 'door_not_found', `this device has no door ${doorId}`);
    return door;
  }


  /**
   * A new identify session at a door; its capture token goes to the kiosk page or the turnstile
   * loop. At a `face+pin` door the PIN typed comes with it: the session then decides among the
   * PIN's holders only. Whether the PIN is anyone's is not said here (nor ever on its own): the
   * answer comes with the face, so a PIN cannot be probed without a capture.
   */
  async startIdentify(doorId: string, pin?: string): Promise<{ token: string; clientState: string; liveness: 'active' | 'passive'; factor: Factor }> {
    const door = this.door(doorId);
    this.#assertInService();
    const liveness = this.liveness(door);
    await this.readyToDecide();
    let candidates: string[] | undefined;
    if (door.factor === 'face+pin') {
      if (pin === undefined) throw new ServiceError('invalid_request', 'pin_required', 'this door asks for a PIN with the face');
      candidates = await this.pins.holders(door.id, pin);
    } else if (pin !== undefined) {
      throw new ServiceError('invalid_request', 'pin_not_used', 'this door does not ask for a PIN');
    }
    const created = await this.sessions.create(
      this.tenantNow(),
      'identify',
      { clientState: crypto.randomUUID(), redirectUrl: `${this.publicUrl}/kiosk?door=${encodeURIComponent(door.id)}`, externalUserId: null },
      { doorId: door.id, livenessMode: liveness, candidates },
    );
    return { token: created.token, clientState: created.clientState, liveness, factor: door.factor };
  }

  /**
   * Shows an integrator's enroll or update_embedding session on a door's kiosk. The link must be
   * one of this service's open capture links, of this device's tenant.
   */
  async open(doorId: string, biometryUrl: string, tenantId = this.tenantNow().id): Promise<void> {
    this.door(doorId);
    this.#assertInService();
    let url: URL;
    try {
      url = new URL(biometryUrl);
    } catch {
      throw new ServiceError('invalid_request', 'invalid_biometry_url', 'biometry_url is not a URL');
    }
    const token = url.searchParams.get('t') ?? '';
    if (`${url.origin}${url.pathname}` !== `${this.publicUrl}/capture` || !token) {
      throw new ServiceError('invalid_request', 'invalid_biometry_url', 'biometry_url is not a capture link of this device');
    }
    const session = await this.sessions.byCaptureToken(token);
    if (session.tenantId !== tenantId || session.tenantId !== this.tenantNow().id) {
      throw new ServiceError('invalid_request', 'invalid_biometry_url', "the session does not belong to this device's tenant");
    }
    if (session.flow !== 'enroll' && session.flow !== 'update_embedding') {
      throw new ServiceError('invalid_request', 'wrong_flow', 'only enroll and update_embedding sessions can be opened on the kiosk');
    }
    this.events.emit('kiosk.open', { doorId, biometryUrl: `/capture?t=${encodeURIComponent(token)}` });
  }
}
