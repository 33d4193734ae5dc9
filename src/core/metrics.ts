import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ModelId } from '../biometrics/matchers/index.ts';
import type { EventBus } from './events.ts';

export interface IdentificationState {
  tenantId: string;
  gallerySize: number;
  /** How many of the tenant's people each model decides (those of the newest hold its template). */
  byModel: Partial<Record<ModelId, number>>;
  threshold: number;
  expectedFpir: number;
}

/** Prometheus metrics, fed from the event bus and the HTTP layer; one registry per service instance. */
export class Metrics {
  readonly registry = new Registry();
  readonly httpDuration = new Histogram({
    name: 'authface_http_request_duration_seconds',
    help: 'HTTP request latency by route and status',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly frames = new Counter({
    name: 'authface_frames_total',
    help: 'Frames analysed, by whether they were accepted',
    labelNames: ['accepted'] as const,
    registers: [this.registry],
  });
  readonly frameSeconds = new Histogram({
    name: 'authface_frame_analysis_seconds',
    help: 'Time to analyse one frame in a worker',
    buckets: [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2],
    registers: [this.registry],
  });
  readonly migrations = new Counter({
    name: 'authface_templates_migrated_total',
    help: "People given the new model's template by a capture that identified or verified them by an older one",
    registers: [this.registry],
  });
  readonly sessions = new Counter({
    name: 'authface_sessions_finished_total',
    help: 'Sessions finished, by flow and status',
    labelNames: ['flow', 'status', 'reason'] as const,
    registers: [this.registry],
  });

  constructor(events: EventBus, probes: { galleryTemplates: () => number; engineQueue: () => number; engineBusy: () => number; identification: () => IdentificationState[] }) {
    collectDefaultMetrics({ register: this.registry, prefix: 'authface_' });
    new Gauge({ name: 'authface_templates', help: 'Templates in the 1:N index', registers: [this.registry], collect() { this.set(probes.galleryTemplates()); } });
    // what 1:N risks at each tenant's gallery size: the threshold in force and the FPIR it gives
    const perTenant = (name: string, help: string, pick: (s: IdentificationState) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['tenant'] as const,
        registers: [this.registry],
        collect() {
          this.reset();
          for (const s of probes.identification()) this.set({ tenant: s.tenantId }, pick(s));
        },
      });
    perTenant('authface_gallery_size', "Enrolled people in the tenant's 1:N gallery", (s) => s.gallerySize);
    perTenant('authface_identify_threshold', 'Similarity identify requires at this gallery size', (s) => s.threshold);
    perTenant('authface_identify_expected_fpir', 'Share of strangers identify would name as somebody at this gallery size and threshold (modelled on LFW)', (s) => s.expectedFpir);
    // the move to a new model: "812 of 1,000 people have the new template" is people{model=new} / gallery_size
    new Gauge({
      name: 'authface_people_by_model',
      help: "People of the tenant decided by each model: the newest they hold a template of",
      labelNames: ['tenant', 'model'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of probes.identification()) for (const [model, n] of Object.entries(s.byModel)) this.set({ tenant: s.tenantId, model }, n);
      },
    });
    new Gauge({ name: 'authface_engine_queue', help: 'Frames waiting for a worker', registers: [this.registry], collect() { this.set(probes.engineQueue()); } });
    new Gauge({ name: 'authface_engine_busy_workers', help: 'Workers analysing a frame', registers: [this.registry], collect() { this.set(probes.engineBusy()); } });
    events.on('frame.analysed', (e) => {
      this.frames.inc({ accepted: String(e.accepted) });
      this.frameSeconds.observe(e.millis / 1000);
    });
    events.on('session.finished', (e) => this.sessions.inc({ flow: e.flow, status: e.status, reason: e.reason ?? 'none' }));
    events.on('template.migrated', () => this.migrations.inc());
  }
}
