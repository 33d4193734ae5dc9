import { ServiceError } from '../errors.ts';
import type { PinStore } from '../store/pins.ts';
import type { PinKeeper } from '../users/service.ts';
import type { DeviceSync, PinVerdict } from './device-sync.ts';

/**
 * A fleet door's PINs: set and removed through the hub while the door waits, so that every door of
 * the tenant applies them from the log. Nothing is queued: a hub that does not answer is a 503,
 * and the PIN is set when it is asked again. A PIN set on this door before it joined (its own
 * row) is removed here too.
 */
export function fleetPinKeeper(sync: DeviceSync, fleetTenantId: string, local: PinStore, waitMs: number): PinKeeper {
  return {
    async set(tenantId, externalUserId, pin) {
      if (tenantId !== fleetTenantId) return local.set(tenantId, externalUserId, pin);
      settled(await sync.setPinThroughHub(externalUserId, pin, waitMs), waitMs);
    },
    async remove(tenantId, externalUserId) {
      if (tenantId !== fleetTenantId) return local.remove(tenantId, externalUserId);
      const verdict = await sync.setPinThroughHub(externalUserId, null, waitMs);
      if (verdict.status === 'refused' && verdict.reason === 'pin_not_found') return local.remove(tenantId, externalUserId);
      settled(verdict, waitMs);
      return true;
    },
  };
}

function settled(verdict: PinVerdict, waitMs: number): void {
  if (verdict.status === 'sequenced') return;
  if (verdict.status === 'unreachable') {
    throw new ServiceError('unavailable', 'hub_unavailable', `the hub did not answer within ${waitMs / 1000} s: a fleet door sets PINs through the hub, so that every door has them; try again when it answers`);
  }
  if (verdict.reason === 'user_not_found') throw new ServiceError('not_found', 'user_not_found', 'no person with this external_user_id is enrolled at the hub');
  if (verdict.reason === 'pin_not_found') throw new ServiceError('not_found', 'pin_not_found', 'this user has no PIN');
  // stale_key: the tenant key was renewed (a revocation) and this door has not had the new version yet
  throw new ServiceError('unavailable', 'hub_unavailable', `the hub refused the PIN (${verdict.reason}); try again in a few seconds`);
}
