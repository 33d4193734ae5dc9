import Router from '@koa/router';
import type { Context } from 'koa';
import type { SessionService } from '../../sessions/service.ts';
import type { Flow } from '../../store/sessions.ts';
import type { TenantAccess } from '../../store/biometry-store.ts';
import type { UserService } from '../../users/service.ts';
import { type TenantState, readJson, requireTenant } from '../http.ts';
import { presentResult, presentUserDetails, presentUserSummary } from '../presenters.ts';
import { flowRequest, identifyRequest, listUsersRequest, resultRequest, userRequest } from '../schemas.ts';

/** The integrator API, `/biometry/v1/*`: every call needs `Authorization: Bearer <api_key>`. */
export function biometryRoutes(deps: { tenants: TenantAccess; sessions: SessionService; users: UserService }): Router {
  const router = new Router<TenantState>({ prefix: '/biometry/v1' });

  // on each route rather than router.use: the request log then names the route, not the prefix
  const auth = requireTenant(deps.tenants);

  const startFlow = (flow: Flow) => async (ctx: Context) => {
    const tenant = (ctx.state as TenantState).tenant;
    const input = flow === 'identify' ? { ...(await readJson(ctx, identifyRequest)), external_user_id: null } : await readJson(ctx, flowRequest);
    const created = await deps.sessions.create(tenant, flow, {
      clientState: input.client_state,
      redirectUrl: input.redirect_url,
      externalUserId: input.external_user_id,
    });
    ctx.body = { success: true, client_state: created.clientState, biometry_url: created.biometryUrl };
  };

  router.post('/enroll', auth, startFlow('enroll'));
  router.post('/verify', auth, startFlow('verify'));
  router.post('/identify', auth, startFlow('identify'));
  router.post('/update_embedding', auth, startFlow('update_embedding'));

  router.post('/result', auth, async (ctx) => {
    const { client_state } = await readJson(ctx, resultRequest);
    ctx.body = presentResult(await deps.sessions.byClientState(ctx.state.tenant, client_state));
  });

  router.post('/list-users', auth, async (ctx) => {
    const { limit, offset } = await readJson(ctx, listUsersRequest);
    const { total, users } = await deps.users.list(ctx.state.tenant, limit, offset);
    ctx.body = { success: true, total, limit, offset, users: users.map(presentUserSummary) };
  });

  router.post('/get-user', auth, async (ctx) => {
    const { external_user_id } = await readJson(ctx, userRequest);
    ctx.body = { success: true, user: presentUserDetails(await deps.users.get(ctx.state.tenant, external_user_id)) };
  });

  router.post('/delete-user', auth, async (ctx) => {
    const { external_user_id } = await readJson(ctx, userRequest);
    const { eventId } = await deps.users.delete(ctx.state.tenant, external_user_id);
    ctx.body = { success: true, external_user_id, event_id: eventId };
  });

  return router;
}
