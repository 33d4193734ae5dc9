import type { ModelId } from '../biometrics/matchers/index.ts';
import type { Factor, Flow } from '../store/sessions.ts';

/** What the core announces; features (metrics, door control, sync) subscribe instead of being called. */
export interface CoreEvents {
  'session.created': { tenantId: string; sessionId: string; flow: Flow };
  'session.finished': {
    tenantId: string;
    sessionId: string;
    flow: Flow;
    status: 'success' | 'fail' | 'expired';
    reason: string | null;
    externalUserId: string | null;
    score: number | null;
    eventId: string;
    doorId: string | null;
    clientState: string;
    /** `face+pin` when a PIN narrowed the decision (door sessions). */
    factor: Factor;
  };
  'frame.analysed': { tenantId: string; accepted: boolean; problems: string[]; millis: number };
  'user.changed': { tenantId: string; externalUserId: string; change: 'enrolled' | 'updated' | 'deleted' };
  /** A capture gave a person decided by an older model the newer model's template (sessions/decisions.ts). */
  'template.migrated': { tenantId: string; models: ModelId[] };
  /** A door's decision on an identify session or a remote unlock (src/access). */
  'access.decided': AccessEvent;
  'door.alarm': { eventId: string; doorId: string; type: 'door_forced' | 'door_held_open' | 'pin_lockout'; time: string };
  /** A door's lock (its relay released or not) or contact changed. */
  'door.state': DoorStatus;
  /** The hub revoked this device, and its people and keys are erased (sync/revoked.ts): it serves no one from now on. */
  'device.revoked': { deviceId: string; revokedAt: string; wipedAt: string };
  /** An enroll/update session to run on a door's kiosk screen. */
  'kiosk.open': { doorId: string; biometryUrl: string };
}

export interface AccessEvent {
  eventId: string;
  doorId: string;
  sessionId: string | null;
  /** The client_state of the kiosk or turnstile session decided (null for a remote unlock). */
  clientState: string | null;
  result: 'granted' | 'denied';
  reason: string | null;
  /** What identified the person: `face`, `face+pin`, or null for a remote unlock. */
  factor: Factor | null;
  externalUserId: string | null;
  score: number | null;
  time: string;
}

/** What a door is now: its lock, and its contact when it has one. */
export interface DoorStatus {
  doorId: string;
  lock: 'locked' | 'unlocked';
  /** null: the door has no contact. */
  contact: 'open' | 'closed' | null;
  time: string;
}

type Listener<K extends keyof CoreEvents> = (payload: CoreEvents[K]) => void;

/**
 * The typed event bus. Events are announced after the fact (a decision is already committed when
 * `session.finished` goes out), so a listener that throws must not reach the emitter: each
 * listener runs on its own, and its failure is reported to `onListenerError` and nowhere else.
 */
export class EventBus {
  readonly #listeners = new Map<keyof CoreEvents, Set<Listener<never>>>();

  constructor(private readonly onListenerError: (name: keyof CoreEvents, err: unknown) => void = () => undefined) {}

  emit<K extends keyof CoreEvents>(name: K, payload: CoreEvents[K]): void {
    // a copy: a listener may unsubscribe itself (or another) while the event is delivered
    for (const listener of [...(this.#listeners.get(name) ?? [])] as Listener<K>[]) {
      try {
        listener(payload);
      } catch (err) {
        this.onListenerError(name, err);
      }
    }
  }

  on<K extends keyof CoreEvents>(name: K, listener: Listener<K>): () => void {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => void set.delete(listener as Listener<never>);
  }
}
