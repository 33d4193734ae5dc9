import crypto from 'node:crypto';
import type { z } from 'zod';

export interface Reply<T = Record<string, unknown>> {
  status: number;
  body: T;
  headers: Headers;
}

type Flow = 'enroll' | 'verify' | 'identify' | 'update_embedding';

/** A thin HTTP client for the service under test: the integrator's side and the capture side. */
export class Client {
  constructor(
    readonly url: string,
    readonly apiKey: string,
  ) {}

  async post<T = Record<string, unknown>>(path: string, body: unknown, headers: Record<string, string> = {}): Promise<Reply<T>> {
    const res = await fetch(this.url + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${this.apiKey}`, ...headers },
      body: typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as T, headers: res.headers };
  }

  /** Starts a session; returns its capture token (the `t` of biometry_url). */
  async start(flow: Flow, opts: { externalUserId?: string; clientState?: string; redirectUrl?: string } = {}) {
    const clientState = opts.clientState ?? crypto.randomUUID();
    const body: Record<string, string> = { client_state: clientState, redirect_url: opts.redirectUrl ?? 'https://app.example.com/callback' };
    if (opts.externalUserId !== undefined) body.external_user_id = opts.externalUserId;
    const reply = await this.post(`/biometry/v1/${flow}`, body);
    if (reply.status !== 200) throw new Error(`start ${flow}: ${reply.status} ${JSON.stringify(reply.body)}`);
    const biometryUrl = new URL(reply.body.biometry_url as string);
    return { clientState, token: biometryUrl.searchParams.get('t') as string, biometryUrl: reply.body.biometry_url as string };
  }

  result(clientState: string) {
    return this.post('/biometry/v1/result', { client_state: clientState });
  }

  capture(token: string): Capture {
    return new Capture(this.url, token);
  }

  /** A whole flow through the capture API: start, open, upload frames, complete, read /result. */
  async run(flow: Flow, frames: Uint8Array[], opts: { externalUserId?: string } = {}) {
    const { clientState, token } = await this.start(flow, opts);
    const capture = this.capture(token);
    await capture.session();
    const feedback = [];
    for (const frame of frames) feedback.push((await capture.frame(frame)).body);
    const completion = await capture.complete();
    const result = await this.result(clientState);
    return { clientState, token, feedback, completion, result: result.body };
  }
}

export class Capture {
  constructor(
    readonly url: string,
    readonly token: string,
  ) {}

  async #call(method: string, path: string, body?: Uint8Array, type = 'image/jpeg'): Promise<Reply> {
    const res = await fetch(this.url + path, {
      method,
      headers: { authorization: `Bearer ${this.token}`, ...(body ? { 'content-type': type } : {}) },
      body,
    });
    return { status: res.status, body: (await res.json()) as Record<string, unknown>, headers: res.headers };
  }

  session() {
    return this.#call('GET', '/capture/v1/session');
  }

  frame(image: Uint8Array, type = 'image/jpeg') {
    return this.#call('POST', '/capture/v1/frames', image, type);
  }

  complete() {
    return this.#call('POST', '/capture/v1/complete');
  }

  cancel() {
    return this.#call('POST', '/capture/v1/cancel');
  }
}

/** Asserts that a reply body has exactly the shape of a schema (strict: no extra fields). */
export function assertShape<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
  const parsed = schema.safeParse(body);
  if (!parsed.success) throw new Error(`response does not match its schema: ${parsed.error.message}\n${JSON.stringify(body)}`);
  return parsed.data;
}
