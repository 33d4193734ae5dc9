import { similarity } from '../biometrics/embedding.ts';
import type { Gallery, GalleryIndex, Match } from '../biometrics/gallery.ts';
import type { IdentifyPolicy } from '../biometrics/identify-policy.ts';
import type { Session } from '../store/sessions.ts';
import type { UserStore } from '../store/users.ts';

export interface Thresholds {
  /** verify and the 1:1 step of update_embedding accept at or above this similarity. */
  match: number;
  /** enroll and update_embedding report `conflict` at or above this similarity to another user. */
  duplicate: number;
  /** identify: a threshold that follows the gallery's size, and the ambiguity margin. */
  identify: IdentifyPolicy;
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
      // face+pin: only the holders of the PIN typed compete, which makes the decision 1:1 (or 1:few)
      const candidates = session.candidates ? candidateMatches(gallery, probe, session.candidates) : gallery.topTwo(probe);
      const rule = t.identify.rule(session.candidates ? session.candidates.length : gallery.size);
      const [first, second] = candidates;
      if (!first || first.score < rule.threshold) return fail('not_identified', first?.score ?? null, null);
      // two people nearly as alike as each other: naming either would be a guess
      if (second && first.score - second.score < rule.margin) return fail('ambiguous_match', first.score, null);
      return { status: 'success', reason: null, score: first.score, externalUserId: first.externalUserId };
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

/** The candidates' scores, best first (a candidate without a template here is left out). */
function candidateMatches(gallery: Gallery, probe: Float32Array, candidates: readonly string[]): Match[] {
  const out: Match[] = [];
  for (const externalUserId of candidates) {
    const score = gallery.scoreOf(probe, externalUserId);
    if (score !== undefined) out.push({ externalUserId, score });
  }
  return out.sort((a, b) => b.score - a.score);
}
