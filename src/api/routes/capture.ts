import Router from '@koa/router';
import type { Context } from 'koa';
import type { CaptureService } from '../../capture/service.ts';
import { ServiceError } from '../../errors.ts';
import { bearer, readImage } from '../http.ts';

/** `X-Light-Phase: <n>`: the challenge colour the page showed when it took the frame. */
function lightPhase(ctx: Context): number | undefined {
  const raw = ctx.get('x-light-phase');
  if (raw === '') return undefined;
  if (!/^\d{1,2}$/.test(raw)) throw new ServiceError('invalid_request', 'invalid_light_phase', 'X-Light-Phase must be a colour index');
  return Number(raw);
}

export const FRAME_TYPES = ['image/jpeg', 'image/png', 'image/webp'];

/**
 * The capture API used by the capture page, native apps and tests, authenticated with the
 * capture token from `biometry_url` as `Authorization: Bearer <token>`.
 */
export function captureRoutes(deps: { capture: CaptureService; maxImageBytes: number }): Router {
  const router = new Router({ prefix: '/capture/v1' });
  const token = (ctx: Context) => {
    const t = bearer(ctx);
    if (!t) throw new ServiceError('unauthorized', 'invalid_capture_token', 'send the capture token as Authorization: Bearer <token>');
    return t;
  };

  router.get('/session', async (ctx) => {
    const view = await deps.capture.open(token(ctx));
    ctx.body = {
      success: true,
      flow: view.session.flow,
      status: view.session.status,
      expires_at: view.session.expiresAt,
      liveness: {
        mode: view.livenessMode,
        challenge: view.session.challenge && {
          steps: view.session.challenge.steps,
          colors: view.session.challenge.colors,
          color_ms: view.session.challenge.colorMillis,
          step_ms: view.session.challenge.stepMillis,
        },
      },
      frames: { required: view.requiredFrames, max: view.maxFrames, max_bytes: deps.maxImageBytes, types: FRAME_TYPES },
    };
  });

  router.post('/frames', async (ctx) => {
    const t = token(ctx);
    await deps.capture.open(t); // reject a dead link before reading a large body
    const feedback = await deps.capture.submitFrame(t, await readImage(ctx, deps.maxImageBytes), { lightPhase: lightPhase(ctx) });
    const l = feedback.liveness;
    ctx.body = {
      success: true,
      accepted: feedback.accepted,
      face_found: feedback.faceFound,
      faces: feedback.faces,
      problems: feedback.problems,
      progress: { accepted_frames: feedback.acceptedFrames, required_frames: feedback.requiredFrames },
      liveness: {
        mode: l.mode,
        steps_done: l.stepsDone,
        steps_total: l.stepsTotal,
        current_step: l.currentStep,
        light_phases_seen: l.lightPhasesSeen,
        light_phases_total: l.lightPhasesTotal,
        failed: l.failed !== null,
      },
    };
  });

  router.post('/complete', async (ctx) => {
    const { session, redirectTo } = await deps.capture.complete(token(ctx));
    ctx.body = { success: true, status: session.status, reason: session.status === 'success' ? null : session.reason, redirect_to: redirectTo };
  });

  router.post('/cancel', async (ctx) => {
    const { session, redirectTo } = await deps.capture.cancel(token(ctx));
    ctx.body = { success: true, status: session.status, reason: session.reason, redirect_to: redirectTo };
  });

  return router;
}
