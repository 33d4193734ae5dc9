import { ServiceError } from '../errors.ts';
import { sealFleetPin } from '../sync/pin-envelope.ts';
import type { Change } from '../sync/protocol.ts';
import type { PinKeeper } from '../users/service.ts';
import type { HubStore } from './store.ts';

/**
 * Sets (or with null removes) a person's PIN at the hub: its verifier is made here and sealed
 * under the tenant key's current version, and sequenced for every door. A rotation between the
 * seal and the sequencing is met by sealing again. `auditedAs` names who did it in the hub's
 * audit trail (the CLI, a console admin).
 */
export async function setPinAtHub(
  store: HubStore,
  tenantId: string,
  externalUserId: string,
  pin: string | null,
  auditedAs?: string,
): Promise<{ change: Change } | { refused: 'user_not_found' | 'pin_not_found' }> {
  for (;;) {
    const sealed = pin === null ? null : await sealFleetPin(await store.keys.current(tenantId), { tenantId, externalUserId }, pin);
    const result = await store.setPin(tenantId, externalUserId, sealed, { auditedAs });
    if ('change' in result) return result;
    if (result.refused !== 'stale_key') return { refused: result.refused };
  }
}

/** The hub's API sets PINs in the log (`publish`: the serving hub sends each change out at once). */
export function hubPinKeeper(store: HubStore, publish: (change: Change) => void): PinKeeper {
  const change = async (tenantId: string, externalUserId: string, pin: string | null): Promise<boolean> => {
    const result = await setPinAtHub(store, tenantId, externalUserId, pin);
    if ('refused' in result) {
      if (result.refused === 'pin_not_found') return false;
      throw new ServiceError('not_found', 'user_not_found', 'no enrolled user with this external_user_id');
    }
    publish(result.change);
    return true;
  };
  return {
    async set(tenantId, externalUserId, pin) {
      await change(tenantId, externalUserId, pin);
    },
    remove: (tenantId, externalUserId) => change(tenantId, externalUserId, null),
  };
}
