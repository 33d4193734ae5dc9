import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';

const MOSQUITTO = 'mqtt://127.0.0.1:1883';

/**
 * The shared Mosquitto on 127.0.0.1:1883 (anonymous, as the machine runs it). The MQTT tests use
 * the real broker; a missing one fails the run rather than being replaced by something else.
 */
export async function testBroker(): Promise<{ url: string; kind: 'mosquitto'; close(): Promise<void> }> {
  try {
    const probe = await mqtt.connectAsync(MOSQUITTO, { connectTimeout: 1500, reconnectPeriod: 0 });
    await probe.endAsync();
    return { url: MOSQUITTO, kind: 'mosquitto', close: async () => undefined };
  } catch (err) {
    throw new Error(`Mosquitto is not reachable on ${MOSQUITTO} (mosquitto -d -c /etc/mosquitto/mosquitto.conf): ${(err as Error).message}`);
  }
}

export interface Listener {
  client: MqttClient;
  messages: { topic: string; payload: string; retain: boolean }[];
  close(): Promise<void>;
}

/** A subscriber that keeps every message it receives on the given topics. */
export async function listen(url: string, topics: string[], options: IClientOptions = {}): Promise<Listener> {
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, ...options });
  const messages: { topic: string; payload: string; retain: boolean }[] = [];
  client.on('message', (topic, payload, packet) => messages.push({ topic, payload: payload.toString(), retain: packet.retain }));
  await client.subscribeAsync(topics, { qos: 1 });
  return { client, messages, close: () => client.endAsync() };
}

/** Waits until `check` holds (polling), or fails after `ms`. */
export async function until(check: () => boolean | Promise<boolean>, ms = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
