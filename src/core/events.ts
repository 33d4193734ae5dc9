import { EventEmitter } from 'node:events';
import type { Flow } from '../store/sessions.ts';

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
  };
  'frame.analysed': { tenantId: string; accepted: boolean; problems: string[]; millis: number };
  'user.changed': { tenantId: string; externalUserId: string; change: 'enrolled' | 'updated' | 'deleted' };
  /** A door's decision on an identify session or a remote unlock (src/access). */
  'access.decided': AccessEvent;
  'door.alarm': { eventId: string; doorId: string; type: 'door_forced' | 'door_held_open'; time: string };
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
  externalUserId: string | null;
  score: number | null;
  time: string;
}

export class EventBus {
  readonly #emitter = new EventEmitter();

  emit<K extends keyof CoreEvents>(name: K, payload: CoreEvents[K]): void {
    this.#emitter.emit(name, payload);
  }

  on<K extends keyof CoreEvents>(name: K, listener: (payload: CoreEvents[K]) => void): () => void {
    this.#emitter.on(name, listener);
    return () => this.#emitter.off(name, listener);
  }
}
