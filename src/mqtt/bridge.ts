import fs from 'node:fs';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { z } from 'zod';
import type { AccessController } from '../access/controller.ts';
import type { KioskService } from '../access/kiosk.ts';
import type { EventBus } from '../core/events.ts';
import type { Logger } from '../core/logger.ts';
import type { DeviceConfig } from '../device/config.ts';

/** Commands fleet admins and integrators may send to `<prefix>/<device_id>/command`. */
const command = z.discriminatedUnion('command', [
  z.strictObject({ command: z.literal('unlock'), door: z.string().min(1).max(64), request_id: z.string().max(100).optional() }),
  z.strictObject({
    command: z.literal('open_session'),
    door: z.string().min(1).max(64),
    biometry_url: z.string().url().max(2048),
    request_id: z.string().max(100).optional(),
  }),
]);

/**
 * The device on MQTT: a retained status with a last will of `offline`, every access decision and
 * door alarm as QoS 1 events, and a command topic (remote unlock, open a session on the kiosk).
 * Payloads carry identifiers and decisions only, never images or embeddings. A malformed or
 * unknown command is logged and ignored; nothing a client sends can stop the service.
 */
export class MqttBridge {
  readonly #unsubscribe: (() => void)[] = [];

  private constructor(
    private readonly client: MqttClient,
    private readonly topics: ReturnType<typeof topicsFor>,
    private readonly deviceId: string,
  ) {}

  static async connect(
    config: DeviceConfig,
    url: string,
    deps: { events: EventBus; access: AccessController; kiosk: KioskService; logger: Logger; version: string },
  ): Promise<MqttBridge> {
    const topics = topicsFor(config);
    const offline = JSON.stringify({ state: 'offline', device_id: config.device_id });
    const options: IClientOptions = {
      ...brokerOptions(config.mqtt),
      clientId: `authface-${config.device_id}`,
      clean: true,
      reconnectPeriod: 2000,
      connectTimeout: 10_000,
      keepalive: 30,
      will: { topic: topics.status, payload: Buffer.from(offline), qos: 1, retain: true },
    };
    const client = await mqtt.connectAsync(url, options);
    const bridge = new MqttBridge(client, topics, config.device_id);
    const online = () =>
      client.publishAsync(
        topics.status,
        JSON.stringify({ state: 'online', device_id: config.device_id, doors: config.doors.map((d) => d.id), version: deps.version, time: new Date().toISOString() }),
        { qos: 1, retain: true },
      );
    await online();
    client.on('connect', () => void online().catch(() => undefined)); // after a reconnect
    client.on('error', (err) => deps.logger.warn({ err: { name: err.name, message: err.message } }, 'mqtt error'));
    await client.subscribeAsync(topics.command, { qos: 1 });
    client.on('message', (topic, payload) => {
      if (topic === topics.command) bridge.#command(payload, deps);
    });
    bridge.#unsubscribe.push(
      deps.events.on('access.decided', (e) =>
        bridge.#publish(topics.access(e.doorId), {
          event_id: e.eventId,
          device_id: config.device_id,
          door_id: e.doorId,
          result: e.result,
          reason: e.reason,
          external_user_id: e.externalUserId,
          score: e.score === null ? null : Number(e.score.toFixed(5)),
          time: e.time,
        }),
      ),
      deps.events.on('door.alarm', (e) =>
        bridge.#publish(topics.alarm(e.doorId), { event_id: e.eventId, device_id: config.device_id, door_id: e.doorId, alarm: e.type, time: e.time }),
      ),
    );
    return bridge;
  }

  /** A clean stop: the status says offline (the last will covers an abrupt one). */
  async close(): Promise<void> {
    for (const u of this.#unsubscribe) u();
    if (this.client.connected) {
      await this.client.publishAsync(this.topics.status, JSON.stringify({ state: 'offline', device_id: this.deviceId }), { qos: 1, retain: true });
    }
    await this.client.endAsync();
  }

  #publish(topic: string, payload: object): void {
    this.client.publish(topic, JSON.stringify(payload), { qos: 1 });
  }

  #command(payload: Buffer, deps: { access: AccessController; kiosk: KioskService; logger: Logger }): void {
    let parsed: z.infer<typeof command>;
    try {
      const result = command.safeParse(JSON.parse(payload.toString('utf8')));
      if (!result.success) {
        const issue = result.error.issues[0];
        deps.logger.warn({ problem: `${issue.path.join('.') || 'command'}: ${issue.message}` }, 'mqtt command ignored');
        return;
      }
      parsed = result.data;
    } catch {
      deps.logger.warn({ problem: 'not JSON' }, 'mqtt command ignored');
      return;
    }
    const reply = (ok: boolean, error?: string) =>
      this.#publish(this.topics.commandResult, { request_id: parsed.request_id ?? null, command: parsed.command, door: parsed.door, ok, ...(error ? { error } : {}) });
    try {
      if (parsed.command === 'unlock') {
        const event = deps.access.unlock(parsed.door, 'mqtt');
        if (!event) deps.logger.warn({ door: parsed.door }, 'mqtt unlock for an unknown door ignored');
        reply(event !== null, event ? undefined : 'unknown door');
      } else {
        deps.kiosk.open(parsed.door, parsed.biometry_url);
        reply(true);
      }
    } catch (err) {
      deps.logger.warn({ command: parsed.command, problem: (err as Error).message }, 'mqtt command refused');
      reply(false, (err as Error).message);
    }
  }
}

/** Credentials and TLS of the configured broker (secrets are read from their files). */
export function brokerOptions(m: DeviceConfig['mqtt']): IClientOptions {
  return {
    username: m.username,
    password: m.password_file ? fs.readFileSync(m.password_file, 'utf8').trim() : undefined,
    ca: m.ca_file ? fs.readFileSync(m.ca_file) : undefined,
    cert: m.cert_file ? fs.readFileSync(m.cert_file) : undefined,
    key: m.key_file ? fs.readFileSync(m.key_file) : undefined,
    rejectUnauthorized: m.reject_unauthorized,
  };
}

export function topicsFor(config: DeviceConfig) {
  const base = `${config.mqtt.topic_prefix}/${config.device_id}`;
  return {
    status: `${base}/status`,
    command: `${base}/command`,
    commandResult: `${base}/command/result`,
    access: (door: string) => `${base}/door/${door}/access`,
    alarm: (door: string) => `${base}/door/${door}/alarm`,
  };
}
