import crypto from 'node:crypto';
import fs from 'node:fs';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { CommandReply, RemoteCommands } from '../access/remote-commands.ts';
import type { DoorStatus, EventBus } from '../core/events.ts';
import { discoveryMessages } from './home-assistant.ts';
import { topicsFor } from './topics.ts';
import type { Logger } from '../core/logger.ts';
import type { DeviceConfig } from '../device/config.ts';
import { OperatorError } from '../errors.ts';
import type { DeviceCredentials } from './broker.ts';

/** How long the start waits for a first connection before it goes on without one. */
const FIRST_CONNECT_WAIT_MS = 5000;

/** How the device's link to its broker is doing, for /readyz, doctor and the device status. */
export interface MqttLink {
  state: 'connecting' | 'connected' | 'disconnected' | 'unavailable';
  /** The broker, without credentials. */
  url: string | null;
  /** The last problem, in words an operator can act on. */
  error: string | null;
  since: string;
}

/**
 * The device on MQTT: a retained status with a last will of `offline`, every access decision and
 * door alarm as QoS 1 events, and (when remote commands are enabled) the command topic, whose
 * messages go to RemoteCommands with their retain flag. Payloads carry identifiers and decisions
 * only, never images or embeddings. The link keeps reconnecting on its own; its state is
 * reported, never thrown: doors keep working without MQTT.
 */
export class MqttBridge {
  readonly #unsubscribe: (() => void)[] = [];
  #link: MqttLink;

  private constructor(
    private readonly client: MqttClient,
    private readonly topics: ReturnType<typeof topicsFor>,
    private readonly deviceId: string,
    url: string,
  ) {
    this.#link = { state: 'connecting', url: withoutCredentials(url), error: null, since: new Date().toISOString() };
  }

  /**
   * Connects (and keeps reconnecting) to `url`. Resolves once connected, or after FIRST_CONNECT_WAIT_MS with
   * the link still trying: a broker that is down does not hold up the doors.
   */
  static async start(
    config: DeviceConfig,
    url: string,
    deps: {
      events: EventBus;
      commands: RemoteCommands;
      logger: Logger;
      version: string;
      credentials?: DeviceCredentials;
      doors: () => DoorStatus[];
      /** In a fleet: a command's result signed by this device (the hub takes it only so). */
      signResult?: (reply: CommandReply) => object;
    },
  ): Promise<MqttBridge> {
    const topics = topicsFor(config.mqtt.topic_prefix, config.device_id);
    const embedded = deps.credentials !== undefined;
    const v5 = !embedded && config.mqtt.protocol_version === 5;
    const offline = JSON.stringify({ state: 'offline', device_id: config.device_id });
    const options: IClientOptions = {
      ...(embedded ? { username: deps.credentials?.username, password: deps.credentials?.password } : brokerOptions(config.mqtt)),
      // never the predictable `authface-<device_id>`: another client taking it would throw this one off
      clientId: deps.credentials?.clientId ?? `authface-${config.device_id}-${crypto.randomBytes(6).toString('hex')}`,
      protocolVersion: v5 ? 5 : 4,
      ...(v5 ? { properties: { maximumPacketSize: config.mqtt.max_packet_bytes } } : {}),
      clean: true,
      reconnectPeriod: 2000,
      connectTimeout: 10_000,
      keepalive: 30,
      will: { topic: topics.status, payload: Buffer.from(offline), qos: 1, retain: true },
    };
    const client = mqtt.connect(url, options);
    const bridge = new MqttBridge(client, topics, config.device_id, url);
    const log = deps.logger;

    client.on('connect', () => {
      bridge.#set('connected', null);
      log.info({ url: bridge.#link.url }, 'connected to MQTT');
      client.publish(
        topics.status,
        JSON.stringify({ state: 'online', device_id: config.device_id, doors: config.doors.map((d) => d.id), version: deps.version, time: new Date().toISOString() }),
        { qos: 1, retain: true },
      );
      // each door's lock and contact, retained (Home Assistant's entities read them)
      for (const status of deps.doors()) bridge.#publishState(status);
      if (!embedded) bridge.#homeAssistant(config, deps.version);
      if (deps.commands.enabled) {
        // MQTT 5: keep the retain flag as published (a retained command is refused), and get no
        // retained message at all when subscribing
        client.subscribe(topics.command, { qos: 1, ...(v5 ? { rap: true, rh: 2 } : {}) }, (err) => {
          if (err) log.error({ problem: err.message }, 'cannot subscribe to the command topic: remote commands will not arrive');
        });
      }
    });
    client.on('reconnect', () => bridge.#set('connecting', bridge.#link.error));
    client.on('close', () => {
      if (bridge.#link.state === 'connected') log.warn({ url: bridge.#link.url }, 'MQTT connection lost; reconnecting');
      bridge.#set('disconnected', bridge.#link.error);
    });
    client.on('error', (err) => {
      const problem = describeMqttError(err);
      if (problem !== bridge.#link.error) log.warn({ url: bridge.#link.url, problem }, 'MQTT error');
      bridge.#set(bridge.#link.state === 'connected' ? 'connected' : 'disconnected', problem);
    });
    client.on('message', (topic, payload, packet) => {
      if (topic !== topics.command) return;
      void deps.commands.receive(payload, { retained: packet.retain }).then(({ reply }) => {
        if (reply) bridge.#publish(topics.commandResult, deps.signResult ? deps.signResult(reply) : reply);
      });
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
          factor: e.factor,
          time: e.time,
        }),
      ),
      deps.events.on('door.state', (e) => bridge.#publishState(e)),
      deps.events.on('door.alarm', (e) =>
        bridge.#publish(topics.alarm(e.doorId), { event_id: e.eventId, device_id: config.device_id, door_id: e.doorId, alarm: e.type, time: e.time }),
      ),
    );

    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, FIRST_CONNECT_WAIT_MS);
      client.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    if (bridge.#link.state !== 'connected') log.error({ url: bridge.#link.url, problem: bridge.#link.error }, 'MQTT not connected yet: access events wait until it is (retrying)');
    return bridge;
  }

  get link(): MqttLink {
    return { ...this.#link };
  }

  /** A clean stop: the status says offline (the last will covers an abrupt one). */
  async close(): Promise<void> {
    for (const u of this.#unsubscribe) u();
    if (this.client.connected) {
      await this.client.publishAsync(this.topics.status, JSON.stringify({ state: 'offline', device_id: this.deviceId }), { qos: 1, retain: true }).catch(() => undefined);
    }
    await this.client.endAsync(true);
  }

  #set(state: MqttLink['state'], error: string | null): void {
    if (state !== this.#link.state) this.#link.since = new Date().toISOString();
    this.#link.state = state;
    this.#link.error = state === 'connected' ? null : error;
  }

  #publish(topic: string, payload: object): void {
    this.client.publish(topic, JSON.stringify(payload), { qos: 1 });
  }

  #publishState(status: DoorStatus): void {
    this.client.publish(this.topics.state(status.doorId), JSON.stringify({ door_id: status.doorId, lock: status.lock, contact: status.contact, time: status.time }), { qos: 1, retain: true });
  }

  /**
   * Home Assistant's discovery for each door, retained (at every connection: the broker may have
   * lost it); turned off, an empty retained message removes each entity.
   */
  #homeAssistant(config: DeviceConfig, version: string): void {
    const on = config.mqtt.home_assistant.discovery;
    for (const m of discoveryMessages(config, version)) this.client.publish(m.topic, on ? JSON.stringify(m.payload) : '', { qos: 1, retain: true });
  }
}

/** A link that never started (the embedded broker could not listen, a secret file is missing). */
export function unavailableLink(url: string | null, error: string): MqttLink {
  return { state: 'unavailable', url: url && withoutCredentials(url), error, since: new Date().toISOString() };
}

function withoutCredentials(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//');
}

/** An MQTT client error in an operator's words. */
export function describeMqttError(err: Error & { code?: string | number }): string {
  if (err.code === 'ECONNREFUSED') return 'connection refused: is the broker running, and is mqtt.url right?';
  if (err.code === 'ENOTFOUND') return 'unknown broker host: check mqtt.url';
  if (/Not authorized|Bad username or password/i.test(err.message)) return 'the broker refused the credentials: check mqtt.username and mqtt.password_file';
  if (/self[- ]signed|unable to verify|certificate/i.test(err.message)) return `TLS: ${err.message} (check mqtt.ca_file)`;
  return err.message;
}

/** Credentials and TLS of a broker (secrets are read from their files). */
export function brokerOptions(m: Pick<DeviceConfig['mqtt'], 'username' | 'password_file' | 'ca_file' | 'cert_file' | 'key_file' | 'reject_unauthorized'>): IClientOptions {
  const read = (key: string, file: string | undefined) => {
    if (!file) return undefined;
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new OperatorError(`mqtt.${key} ${file} cannot be read (${(err as NodeJS.ErrnoException).code}): create it, or fix the path`);
    }
  };
  return {
    username: m.username,
    password: read('password_file', m.password_file)?.toString('utf8').trim(),
    ca: read('ca_file', m.ca_file),
    cert: read('cert_file', m.cert_file),
    key: read('key_file', m.key_file),
    rejectUnauthorized: m.reject_unauthorized,
  };
}
