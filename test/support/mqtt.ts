import mqtt, { type MqttClient } from 'mqtt';
import { EmbeddedBroker } from '../../src/mqtt/broker.ts';

const MOSQUITTO = 'mqtt://127.0.0.1:1883';

/**
 * The broker the MQTT tests talk to: the real Mosquitto on 127.0.0.1:1883 when it is reachable
 * (always in CI: AUTHFACE_TEST_REQUIRE_MOSQUITTO=1 makes its absence an error), else an embedded
 * broker on a free port.
 */
export async function testBroker(): Promise<{ url: string; kind: 'mosquitto' | 'embedded'; close(): Promise<void> }> {
  try {
    const probe = await mqtt.connectAsync(MOSQUITTO, { connectTimeout: 1500, reconnectPeriod: 0 });
    await probe.endAsync();
    return { url: MOSQUITTO, kind: 'mosquitto', close: async () => undefined };
  } catch (err) {
    if (process.env.AUTHFACE_TEST_REQUIRE_MOSQUITTO === '1') throw new Error(`Mosquitto is not reachable on ${MOSQUITTO}: ${(err as Error).message}`);
    const broker = await EmbeddedBroker.start('127.0.0.1', 0);
    return { url: broker.url, kind: 'embedded', close: () => broker.close() };
  }
}

/** A subscriber that keeps every message it receives on the given topics. */
export async function listen(url: string, topics: string[]): Promise<{ client: MqttClient; messages: { topic: string; payload: string; retain: boolean }[]; close(): Promise<void> }> {
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 0 });
  const messages: { topic: string; payload: string; retain: boolean }[] = [];
  client.on('message', (topic, payload, packet) => messages.push({ topic, payload: payload.toString(), retain: packet.retain }));
  await client.subscribeAsync(topics, { qos: 1 });
  return { client, messages, close: () => client.endAsync() };
}

/** Waits until `check` holds (polling), or fails after `ms`. */
export async function until(check: () => boolean, ms = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
