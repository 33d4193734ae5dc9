import type { EventBus } from '../core/events.ts';
import { revokedMessage } from '../sync/revoked.ts';

/** Why a device serves no one. */
export interface OutOfService {
  code: 'device_revoked';
  since: string;
  /** What to tell whoever asks it for anything, and how to use it again. */
  message: string;
}

/**
 * Whether this device serves anyone. The hub's revocation takes it out of service at once, with no
 * restart (its next start refuses: sync/revoked.ts): from then on every API key is refused, no
 * session starts or goes on, every door denies, the kiosk says the door is out of service and
 * /readyz is not ready. Only what reports this state still answers (api/app.ts).
 */
export class ServiceState {
  #outOfService: OutOfService | null = null;
  readonly #off: () => void;

  constructor(events: EventBus) {
    this.#off = events.on('device.revoked', (e) => {
      this.#outOfService = { code: 'device_revoked', since: e.revokedAt, message: revokedMessage({ device_id: e.deviceId, revoked_at: e.revokedAt, wiped_at: e.wipedAt }) };
    });
  }

  /** Null while the device serves. */
  get outOfService(): OutOfService | null {
    return this.#outOfService;
  }

  close(): void {
    this.#off();
  }
}
