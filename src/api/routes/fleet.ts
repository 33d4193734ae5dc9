import Router from '@koa/router';
import type { CommandOutcome, CommandRequest } from '../../hub/commands.ts';
import { commandRequestSchema } from '../../hub/commands.ts';
import type { JoinReply, JoinRequest } from '../../hub/join.ts';
import { joinRequestSchema } from '../../hub/join.ts';
import type { TenantAccess } from '../../store/biometry-store.ts';
import { type TenantState, readJson, requireTenant } from '../http.ts';
import { ServiceError } from '../../errors.ts';
import { type FleetNotice, type NoticeRequest, noticeRequestSchema } from '../../sync/notice.ts';
import { type Challenge, type ChallengeRequest, type Registration, challengeRequestSchema, registrationSchema } from '../../sync/signing-registration.ts';

/**
 * The hub's fleet endpoints: `POST /fleet/v1/join`, where a device trades a claim code for its
 * configuration (no API key: the single-use code is the credential), and `POST /fleet/v1/command`,
 * where a tenant (its API key) has one of its doors unlock or show a capture link, and
 * `POST /fleet/v1/notice`, where a device the broker turns away reads its signed notice (its keys,
 * or its revocation), and `POST /fleet/v1/signing-key[/challenge]`, where a device that joined
 * with an earlier release registers its signing key.
 */
export function fleetRoutes(deps: {
  tenants: TenantAccess;
  join: (request: JoinRequest) => Promise<JoinReply>;
  command: (tenantId: string, request: CommandRequest) => Promise<CommandOutcome>;
  notice: (request: NoticeRequest) => Promise<FleetNotice | null>;
  signingKeyChallenge: (request: ChallengeRequest) => Promise<Challenge>;
  registerSigningKey: (request: Registration) => Promise<boolean>;
}): Router<TenantState> {
  const router = new Router<TenantState>({ prefix: '/fleet/v1' });
  router.post('/join', async (ctx) => {
    ctx.body = await deps.join(await readJson(ctx, joinRequestSchema));
  });
  // a device the broker turns away asks here, with its request signed by its own key; the answer
  // to an unknown device and to a request it did not sign is the same
  router.post('/notice', async (ctx) => {
    const notice = await deps.notice(await readJson(ctx, noticeRequestSchema));
    if (!notice) throw new ServiceError('not_found', 'notice_not_found', "no notice for this device: it has not joined this tenant, or the request is not signed by its key (sync/device-signing.key) at a time within 15 minutes of the hub's clock");
    ctx.body = { success: true, notice };
  });
  // a door that joined with an earlier release registers the signing key it now signs with,
  // proving its device key pair (sync/signing-registration.ts)
  router.post('/signing-key/challenge', async (ctx) => {
    ctx.body = { success: true, ...(await deps.signingKeyChallenge(await readJson(ctx, challengeRequestSchema))) };
  });
  router.post('/signing-key', async (ctx) => {
    if (!(await deps.registerSigningKey(await readJson(ctx, registrationSchema)))) {
      throw new ServiceError('not_found', 'signing_key_refused', "the signing key was not registered: the device has not joined this tenant, was revoked or holds another signing key, or the challenge expired, or the proof of its device key (sync/device.key) or the signature of the new key does not verify");
    }
    ctx.body = { success: true };
  });
  router.post('/command', requireTenant(deps.tenants), async (ctx) => {
    ctx.body = { success: true, ...(await deps.command(ctx.state.tenant.id, await readJson(ctx, commandRequestSchema))) };
  });
  return router;
}
