import Router from '@koa/router';
import type { CommandOutcome, CommandRequest } from '../../hub/commands.ts';
import { commandRequestSchema } from '../../hub/commands.ts';
import type { JoinReply, JoinRequest } from '../../hub/join.ts';
import { joinRequestSchema } from '../../hub/join.ts';
import type { TenantAccess } from '../../store/biometry-store.ts';
import { type TenantState, readJson, requireTenant } from '../http.ts';

/**
 * The hub's fleet endpoints: `POST /fleet/v1/join`, where a device trades a claim code for its
 * configuration (no API key: the single-use code is the credential), and `POST /fleet/v1/command`,
 * where a tenant (its API key) has one of its doors unlock or show a capture link.
 */
export function fleetRoutes(deps: {
  tenants: TenantAccess;
  join: (request: JoinRequest) => Promise<JoinReply>;
  command: (tenantId: string, request: CommandRequest) => Promise<CommandOutcome>;
}): Router<TenantState> {
  const router = new Router<TenantState>({ prefix: '/fleet/v1' });
  router.post('/join', async (ctx) => {
    ctx.body = await deps.join(await readJson(ctx, joinRequestSchema));
  });
  router.post('/command', requireTenant(deps.tenants), async (ctx) => {
    ctx.body = { success: true, ...(await deps.command(ctx.state.tenant.id, await readJson(ctx, commandRequestSchema))) };
  });
  return router;
}
