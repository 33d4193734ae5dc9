import { similarity } from '../biometrics/embedding.ts';
import type { GalleryIndex, Match, TenantGallery } from '../biometrics/gallery.ts';
import { IdentifyPolicy } from '../biometrics/identify-policy.ts';
import { type Embeddings, type ModelId, MATCHERS, PRIMARY_MODEL } from '../biometrics/matchers/index.ts';
import type { SameFaceLimits } from '../liveness/index.ts';
import type { UserAccess, UserWrite } from '../store/biometry-store.ts';
import type { User } from '../store/users.ts';
import type { Session } from '../store/sessions.ts';

/** The decision thresholds of one model, on its own score scale. */
export interface ModelThresholds {
  /** verify and the 1:1 step of update_embedding accept at or above this similarity. */
  match: number;
  /** enroll and update_embedding report `conflict` at or above this similarity to another user. */
  duplicate: number;
  /** identify: a threshold that follows the gallery's size, and the ambiguity margin. */
  identify: IdentifyPolicy;
}

export type Thresholds = Record<ModelId, ModelThresholds>;

/**
 * Each model's thresholds: its measured defaults (matchers/index.ts), and for the primary model
 * the operator's settings over them (the device file's, over the environment's). Identify never
 * goes below a model's 1:1 threshold.
 */
export function decisionThresholds(targetFpir: number, primary: { match: number; duplicate: number; margin: number }): Thresholds {
  return Object.fromEntries(
    MATCHERS.map((m) => {
      const own = m.id === PRIMARY_MODEL ? primary : { match: m.matchThreshold, duplicate: m.duplicateThreshold, margin: m.identifyMargin };
      return [m.id, { match: own.match, duplicate: own.duplicate, identify: new IdentifyPolicy({ targetFpir, minThreshold: own.match, margin: own.margin }, m.impostorTail) }];
    }),
  ) as Thresholds;
}

export interface Decision {
  status: 'success' | 'fail';
  reason: string | null;
  /** On the scale of the model that decided (the primary model's once the person holds its template). */
  score: number | null;
  /** The user the result is about (the session's user, or whom identify found). */
  externalUserId: string | null;
  /** The enrolment, new template or migrated template this decision makes, written with the session's outcome. */
  write?: UserWrite;
}

/**
 * The biometric decision of a finished capture, for each flow. `probe` holds the capture's
 * embedding of each model the tenant uses. A person is decided by the newest model they hold a
 * template of (TenantGallery), so people enrolled before a new model keep opening their door; a
 * capture that verifies or identifies them strongly by the old model also stores the new model's
 * template from the same frames (`migrate`). It only reads: the write it decides on is made with
 * the session's outcome in one transaction, which refuses it if the user changed since (and the
 * session service then decides again), and the service runs one enrolment of a tenant at a time,
 * so the 1:N duplicate check and the enrolment cannot race.
 */
export async function decide(session: Session, probe: Embeddings, users: UserAccess, index: GalleryIndex, t: Thresholds, opts: { learnsFromCaptures: boolean } = { learnsFromCaptures: true }): Promise<Decision> {
  const gallery = index.of(session.tenantId);
  // a strong capture may give the person the new model's template, or join their template
  const fromCapture = (user: User, held: Embeddings, decidedBy: ModelId, score: number) =>
    opts.learnsFromCaptures ? templateWrite(user, held, decidedBy, score, gallery, probe, t) : undefined;
  const fail = (reason: string, score: number | null, externalUserId = session.externalUserId): Decision => ({ status: 'fail', reason, score, externalUserId });
  // enrolment and update compare the face with everyone: every model in use must have described it
  const writes = session.flow === 'enroll' || session.flow === 'update_embedding';
  if (writes && (Object.keys(probe).length === 0 || gallery.models().some((m) => !probe[m]))) return fail('not_enough_frames', null);

  switch (session.flow) {
    case 'enroll': {
      const id = session.externalUserId as string;
      if (await users.get(session.tenantId, id)) return fail('already_enrolled', null);
      const duplicate = nearestDuplicate(gallery, probe, t);
      if (duplicate) return fail('conflict', duplicate.score);
      return { status: 'success', reason: null, score: null, externalUserId: id, write: { kind: 'enroll', externalUserId: id, templates: probe } };
    }
    case 'verify': {
      const user = await users.get(session.tenantId, session.externalUserId as string);
      if (!user) return fail('user_not_found', null);
      // a live user without a usable template: it was damaged or altered, they must enrol again
      const held = await users.templates(user);
      const model = decidingModel(held, probe);
      if (!model) return fail('reenrolment_required', null);
      const score = similarity(probe[model] as Float32Array, held[model] as Float32Array);
      if (score < t[model].match) return fail('below_threshold', score);
      return { status: 'success', reason: null, score, externalUserId: user.externalUserId, write: fromCapture(user, held, model, score) };
    }
    case 'identify': {
      const found = identify(gallery, probe, t, session.candidates);
      if (found.status === 'fail') return fail(found.reason, found.score, null);
      const user = opts.learnsFromCaptures && probe[PRIMARY_MODEL] && strong(found.model, found.score, gallery, t) ? await users.get(session.tenantId, found.externalUserId) : undefined;
      const write = user ? fromCapture(user, await users.templates(user), found.model, found.score) : undefined;
      return { status: 'success', reason: null, score: found.score, externalUserId: found.externalUserId, write };
    }
    case 'update_embedding': {
      const user = await users.get(session.tenantId, session.externalUserId as string);
      if (!user) return fail('user_not_found', null);
      // without a template to prove identity against, only delete-user and a new enrolment can help
      const held = await users.templates(user);
      const model = decidingModel(held, probe);
      if (!model) return fail('reenrolment_required', null);
      // the person must first prove to be this user: a different face cannot replace the template
      const score = similarity(probe[model] as Float32Array, held[model] as Float32Array);
      if (score < t[model].match) return fail('below_threshold', score);
      const duplicate = nearestDuplicate(gallery, probe, t, user.externalUserId);
      if (duplicate) return fail('conflict', duplicate.score);
      return { status: 'success', reason: null, score, externalUserId: user.externalUserId, write: { kind: 'update', user, templates: probe } };
    }
  }
}

/** Frames of one capture are the same face when they score each model's 1:1 threshold (frontal) or its looser turned one. */
export function sameFaceLimits(t: Thresholds): SameFaceLimits {
  return Object.fromEntries(MATCHERS.map((m) => [m.id, { frontal: t[m.id].match, turned: m.sameFaceTurned }])) as SameFaceLimits;
}

/** The newest model of which both the person holds a template and the probe has an embedding. */
function decidingModel(held: Embeddings, probe: Embeddings): ModelId | undefined {
  return MATCHERS.find((m) => held[m.id] && probe[m.id])?.id;
}

/** Another person whose face this is, by the model that decides them (at that model's duplicate threshold). */
function nearestDuplicate(gallery: TenantGallery, probe: Embeddings, t: Thresholds, excludeUserId?: string): Match | undefined {
  for (const model of gallery.models()) {
    const nearest = gallery.gallery(model).best(probe[model] as Float32Array, excludeUserId);
    if (nearest && nearest.score >= t[model].duplicate) return nearest;
  }
  return undefined;
}

type Identified = { status: 'success'; externalUserId: string; model: ModelId; score: number } | { status: 'fail'; reason: 'not_identified' | 'ambiguous_match'; score: number | null };

/**
 * 1:N over the tenant's people, each compared by the model that decides them. Each model's
 * threshold is the one its impostor tail gives for the tenant's whole gallery: a stranger then has
 * the target FPIR over all comparisons together, whichever model makes them. Two people who both
 * pass (in one model within its margin of each other, or in two models) make the match ambiguous.
 * face+pin: only the holders of the PIN typed compete, which makes the decision 1:1 (or 1:few).
 */
function identify(gallery: TenantGallery, probe: Embeddings, t: Thresholds, candidates: string[] | null): Identified {
  const competing = candidates ? candidates.filter((id) => gallery.modelOf(id) !== undefined).length : gallery.size;
  const passing: { model: ModelId; first: Match; second?: Match; margin: number }[] = [];
  let bestScore: number | null = null;
  for (const model of gallery.models()) {
    const embedding = probe[model];
    if (!embedding) continue; // the capture did not describe the face with it: its people cannot be named
    const models = gallery.gallery(model);
    const [first, second] = candidates ? candidateMatches(gallery, model, embedding, candidates) : models.topTwo(embedding);
    if (!first) continue;
    bestScore ??= first.score; // reported on the newest model's scale (models() is newest first)
    const rule = t[model].identify.rule(competing);
    if (first.score >= rule.threshold) passing.push({ model, first, second, margin: rule.margin });
  }
  if (passing.length === 0) return { status: 'fail', reason: 'not_identified', score: bestScore };
  const [named] = passing;
  // two people nearly as alike as each other: naming either would be a guess
  const ambiguous = passing.length > 1 || (named.second !== undefined && named.first.score - named.second.score < named.margin);
  if (ambiguous) return { status: 'fail', reason: 'ambiguous_match', score: named.first.score };
  return { status: 'success', externalUserId: named.first.externalUserId, model: named.model, score: named.first.score };
}

/** The candidates decided by `model`, with their scores, best first. */
function candidateMatches(gallery: TenantGallery, model: ModelId, probe: Float32Array, candidates: readonly string[]): Match[] {
  const out: Match[] = [];
  for (const externalUserId of candidates) {
    if (gallery.modelOf(externalUserId) !== model) continue;
    const score = gallery.gallery(model).scoreOf(probe, externalUserId);
    if (score !== undefined) out.push({ externalUserId, score });
  }
  return out.sort((a, b) => b.score - a.score);
}

/** A match strong enough to write from: at the model's identify threshold for a gallery of the tenant's whole size (above its 1:1 threshold). */
function strong(model: ModelId, score: number, gallery: TenantGallery, t: Thresholds): boolean {
  return score >= t[model].identify.rule(gallery.size).threshold;
}

/**
 * What a capture that verified or identified a person strongly may write, from its own frames,
 * with the same guard rails for both (README, "Moving to a new model" and "Templates from door
 * captures"): the match was strong; the capture passed its liveness (it is being decided at all);
 * and the new model's embedding is not another person's face by its duplicate threshold.
 * - `migrate`: a person decided by an older model gets the primary model's template.
 * - `adapt`: a person decided by the primary model keeps the capture beside their enrolment
 *   template (the store caps how many, and never replaces the enrolment template).
 */
function templateWrite(user: User, held: Embeddings, decidedBy: ModelId, score: number, gallery: TenantGallery, probe: Embeddings, t: Thresholds): UserWrite | undefined {
  const fresh = probe[PRIMARY_MODEL];
  if (!fresh || !strong(decidedBy, score, gallery, t)) return undefined;
  if (decidedBy !== PRIMARY_MODEL && held[PRIMARY_MODEL]) return undefined;
  const other = gallery.gallery(PRIMARY_MODEL).best(fresh, user.externalUserId);
  if (other && other.score >= t[PRIMARY_MODEL].duplicate) return undefined;
  return { kind: decidedBy === PRIMARY_MODEL ? 'adapt' : 'migrate', user, templates: { [PRIMARY_MODEL]: fresh } };
}
