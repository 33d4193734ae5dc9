import { similarity } from '../biometrics/embedding.ts';
import type { Gallery, GalleryIndex, Match } from '../biometrics/gallery.ts';
import type { IdentifyPolicy } from '../biometrics/identify-policy.ts';
import type { UserAccess, UserWrite } from '../store/biometry-store.ts';
import type { Session } from '../store/sessions.ts';

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
  /** The enrolment or new template this decision makes, written with the session's outcome. */
  write?: UserWrite;
}

/**
 * The biometric decision of a finished capture, for each flow. It only reads: the write it decides
 * on is made with the session's outcome in one transaction, which refuses it if the user changed
 * since (and the session service then decides again), and the service runs one decision of a
 * tenant at a time, so the 1:N duplicate check and the enrolment cannot race.
 */
export async function decide(
  session: Session,
  probe: Float32Array,
  users: UserAccess,
  index: GalleryIndex,
  t: Thresholds,
): Promise<Decision> {
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
      if (await users.get(session.tenantId, id)) return fail('already_enrolled', null);
      const nearest = gallery.best(probe);
      if (nearest && nearest.score >= t.duplicate) return fail('conflict', nearest.score);
      return { status: 'success', reason: null, score: null, externalUserId: id, write: { kind: 'enroll', externalUserId: id, embedding: probe } };
    }
    case 'verify': {
      const user = await users.get(session.tenantId, session.externalUserId as string);
      if (!user) return fail('user_not_found', null);
      // a live user without a usable template: it was damaged or altered, they must enrol again
      const template = await users.activeEmbedding(user);
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
      const user = await users.get(session.tenantId, session.externalUserId as string);
      if (!user) return fail('user_not_found', null);
      // without a template to prove identity against, only delete-user and a new enrolment can help
      const template = await users.activeEmbedding(user);
      if (!template) return fail('reenrolment_required', null);
      // the person must first prove to be this user: a different face cannot replace the template
      const score = similarity(probe, template);
      if (score < t.match) return fail('below_threshold', score);
      const other = gallery.best(probe, user.externalUserId);
      if (other && other.score >= t.duplicate) return fail('conflict', other.score);
      return { status: 'success', reason: null, score, externalUserId: user.externalUserId, write: { kind: 'update', user, embedding: probe } };
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
