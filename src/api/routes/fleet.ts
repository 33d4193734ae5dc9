import Router from '@koa/router';
import { z } from 'zod';
import type { CommandOutcome, CommandRequest } from '../../hub/commands.ts';
import { commandRequestSchema } from '../../hub/commands.ts';
import type { JoinReply, JoinRequest } from '../../hub/join.ts';
import { joinRequestSchema } from '../../hub/join.ts';
import type { TenantAccess } from '../../store/biometry-store.ts';
import { type TenantState, readJson, requireTenant } from '../http.ts';
import { ServiceError } from '../../errors.ts';
import type { FleetNotice } from '../../sync/notice.ts';

const noticeRequestSchema = z.strictObject({ tenant_id: z.uuid(), device_id: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/) });

/**
 * The hub's fleet endpoints: `POST /fleet/v1/join`, where a device trades a claim code for its
 * configuration (no API key: the single-use code is the credential), and `POST /fleet/v1/command`,
 * where a tenant (its API key) has one of its doors unlock or show a capture link, and
 * `POST /fleet/v1/notice`, where a device the broker turns away reads its signed notice (its keys,
 * or its revocation).
 */
export function fleetRoutes(deps: {
  tenants: TenantAccess;
  join: (request: JoinRequest) => Promise<JoinReply>;
  command: (tenantId: string, request: CommandRequest) => Promise<CommandOutcome>;
  notice: (tenantId: string, deviceId: string) => Promise<FleetNotice | null>;
}): Router<TenantState> {
  const router = new Router<TenantState>({ prefix: '/fleet/v1' });
  router.post('/join', async (ctx) => {
    ctx.body = await deps.join(await readJson(ctx, joinRequestSchema));
  });
  // a device the broker turns away asks here (no key: a notice is signed, and says only what the device is told anyway)
  router.post('/notice', async (ctx) => {
    const { tenant_id, device_id } = await readJson(ctx, noticeRequestSchema);
    const notice = await deps.notice(tenant_id, device_id);
    if (!notice) throw new ServiceError('not_found', 'device_not_found', `no device ${device_id} has joined tenant ${tenant_id}`);
    ctx.body = { success: true, notice };
  });
  router.post('/command', requireTenant(deps.tenants), async (ctx) => {
    ctx.body = { success: true, ...(await deps.command(ctx.state.tenant.id, await readJson(ctx, commandRequestSchema))) };
  });
  return router;
}
