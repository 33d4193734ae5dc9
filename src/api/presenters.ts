import type { z } from 'zod';
import type { Session } from '../store/sessions.ts';
import type { User } from '../store/users.ts';
import type { UserDetails } from '../users/service.ts';
import type { resultFinal, resultOpen, userDetails, userSummary } from './schemas.ts';

/** `YYYY-MM-DD HH:MM:SS` in UTC, the spec's time format. */
export function specTime(iso: string): string {
  return iso.slice(0, 19).replace('T', ' ');
}

/** Similarity as the spec shows scores: within 0..1, five decimals. */
export function specScore(score: number | null): number | null {
  return score === null ? null : Number(Math.min(1, Math.max(0, score)).toFixed(5));
}

/** The /result answer: the short shape while open, the full one once finished. No internal ids. */
export function presentResult(session: Session): z.infer<typeof resultOpen> | z.infer<typeof resultFinal> {
  if (session.status === 'pending' || session.status === 'in_progress') {
    return {
      success: true,
      state: session.clientState,
      flow: session.flow,
      status: session.status,
      external_user_id: session.externalUserId,
    };
  }
  return {
    success: true,
    state: session.clientState,
    flow: session.flow,
    status: session.status,
    event_id: session.eventId as string,
    result: session.status === 'success' ? 'success' : 'fail',
    reason: session.status === 'success' ? null : session.reason,
    external_user_id: session.resultUserId,
    score: specScore(session.score),
    completed_at: specTime(session.completedAt as string),
  };
}

export function presentUserSummary(user: User): z.infer<typeof userSummary> {
  return {
    external_user_id: user.externalUserId,
    created_at: specTime(user.createdAt),
    updated_at: specTime(user.updatedAt),
    needs_reenrolment: user.needsReenrolment,
  };
}

export function presentUserDetails(user: UserDetails): z.infer<typeof userDetails>['user'] {
  return {
    ...presentUserSummary(user),
    version: user.version,
    templates: user.templates.map((t) => ({ version: t.version, active: t.active, created_at: specTime(t.createdAt) })),
  };
}
