import Router from '@koa/router';
import type { JoinReply, JoinRequest } from '../../hub/join.ts';
import { joinRequestSchema } from '../../hub/join.ts';
import { readJson } from '../http.ts';

/**
 * The hub's fleet endpoints: `POST /fleet/v1/join`, where a device trades a claim code for its
 * configuration (no API key: the single-use code is the credential).
 */
export function fleetRoutes(deps: { join: (request: JoinRequest) => Promise<JoinReply> }): Router {
  const router = new Router({ prefix: '/fleet/v1' });
  router.post('/join', async (ctx) => {
    ctx.body = await deps.join(await readJson(ctx, joinRequestSchema));
  });
  return router;
}
