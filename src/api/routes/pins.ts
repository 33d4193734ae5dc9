import Router from '@koa/router';
import type { TenantAccess } from '../../store/biometry-store.ts';
import type { UserService } from '../../users/service.ts';
import { type TenantState, readJson, requireTenant } from '../http.ts';
import { removePinRequest, setPinRequest } from '../schemas.ts';

/**
 * PINs of the `face+pin` second factor, per enrolled user: `POST /device/v1/set-pin` and
 * `/device/v1/remove-pin`, with the tenant's API key (in the style of /biometry/v1, which they
 * leave as its contract has it). The PIN travels in the body only, and is neither logged nor returned.
 */
export function pinRoutes(deps: { tenants: TenantAccess; users: UserService }): Router<TenantState> {
  const router = new Router<TenantState>({ prefix: '/device/v1' });
  const auth = requireTenant(deps.tenants); // on each route: the request log names it
  router.post('/set-pin', auth, async (ctx) => {
    const { external_user_id, pin } = await readJson(ctx, setPinRequest);
    const { eventId } = await deps.users.setPin(ctx.state.tenant, external_user_id, pin);
    ctx.body = { success: true, external_user_id, event_id: eventId };
  });
  router.post('/remove-pin', auth, async (ctx) => {
    const { external_user_id } = await readJson(ctx, removePinRequest);
    const { eventId } = await deps.users.removePin(ctx.state.tenant, external_user_id);
    ctx.body = { success: true, external_user_id, event_id: eventId };
  });
  return router;
}
