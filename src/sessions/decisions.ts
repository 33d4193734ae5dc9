import { similarity } from '../biometrics/embedding.ts';
import type { GalleryIndex } from '../biometrics/gallery.ts';
import type { Session } from '../store/sessions.ts';
import type { UserStore } from '../store/users.ts';

export interface Thresholds {
  /** verify, identify and the 1:1 step of update_embedding accept at or above this similarity. */
  match: number;
  /** enroll and update_embedding report `conflict` at or above this similarity to another user. */
  duplicate: number;
}

export interface Decision {
  status: 'success' | 'fail';
  reason: string | null;
  score: number | null;
  /** The user the result is about (the session's user, or whom identify found). */
  externalUserId: string | null;
  /** Applied to the 1:N index once the transaction holding the decision has committed. */
  indexChange?: { type: 'upsert'; externalUserId: string; embedding: Float32Array };
}

/**
 * The biometric decision of a finished capture, for each flow. Runs synchronously inside the
 * transaction that records the session's outcome, so the 1:N check and the write cannot race.
 */
export function decide(
  session: Session,
  probe: Float32Array,
  users: UserStore,
  index: GalleryIndex,
  t: Thresholds,
): Decision {
  const gallery = index.of(session.tenantId);
  const fail = (reason: string, score: number | null, externalUserId = session.externalUserId): Decision => ({
    status: 'fail',
    reason,
    score,
    externalUserId,
  });

  switch (session.flow) {
    case 'enroll': {
      const id = session.externalUserId as string;
      if (users.get(session.tenantId, id)) return fail('already_enrolled', null);
      const nearest = gallery.best(probe);
      if (nearest && nearest.score >= t.duplicate) return fail('conflict', nearest.score);
      users.enroll(session.tenantId, id, probe);
      return {
        status: 'success',
        reason: null,
        score: null,
        externalUserId: id,
        indexChange: { type: 'upsert', externalUserId: id, embedding: probe },
      };
    }
    case 'verify': {
      const user = users.get(session.tenantId, session.externalUserId as string);
      if (!user) return fail('user_not_found', null);
      // a live user without a usable template: it was damaged or altered, they must enrol again
      const template = users.activeEmbedding(user);
      if (!template) return fail('reenrolment_required', null);
      const score = similarity(probe, template);
      return score >= t.match
        ? { status: 'success', reason: null, score, externalUserId: user.externalUserId }
        : fail('below_threshold', score);
    }
    case 'identify': {
      const nearest = gallery.best(probe);
      if (!nearest || nearest.score < t.match) return fail('not_identified', nearest?.score ?? null, null);
      return { status: 'success', reason: null, score: nearest.score, externalUserId: nearest.externalUserId };
    }
    case 'update_embedding': {
      const user = users.get(session.tenantId, session.externalUserId as string);
      if (!user) return fail('user_not_found', null);
      // without a template to prove identity against, only delete-user and a new enrolment can help
      const template = users.activeEmbedding(user);
      if (!template) return fail('reenrolment_required', null);
      // the person must first prove to be this user: a different face cannot replace the template
      const score = similarity(probe, template);
      if (score < t.match) return fail('below_threshold', score);
      const other = gallery.best(probe, user.externalUserId);
      if (other && other.score >= t.duplicate) return fail('conflict', other.score);
      users.replaceTemplate(user, probe);
      return {
        status: 'success',
        reason: null,
        score,
        externalUserId: user.externalUserId,
        indexChange: { type: 'upsert', externalUserId: user.externalUserId, embedding: probe },
      };
    }
  }
}
