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
  };
  'frame.analysed': { tenantId: string; accepted: boolean; problems: string[]; millis: number };
  'user.changed': { tenantId: string; externalUserId: string; change: 'enrolled' | 'updated' | 'deleted' };
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
