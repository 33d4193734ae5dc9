import assert from 'node:assert/strict';
import mqtt from 'mqtt';
import { z } from 'zod';
import type { SimulatedContact } from '../src/access/hardware.ts';
import { type TestDevice, startTestDevice } from './support/device.ts';
import { listen, testBroker, until } from './support/mqtt.ts';

/**
 * Home Assistant's MQTT discovery options as its documentation gives them (integrations/mqtt,
 * lock.mqtt, binary_sensor.mqtt, sensor.mqtt), for the three components a door publishes: strict,
 * so an option Home Assistant does not know fails, and with the options it requires.
 */
const topic = z.string().min(1).regex(/^[^#+]+$/, { error: 'a topic, not a filter' });
const template = z.string().regex(/^\{\{.*\}\}$/);
const availability = z.strictObject({ topic, payload_available: z.string().optional(), payload_not_available: z.string().optional(), value_template: template.optional() });
const device = z.strictObject({
  identifiers: z.array(z.string()).min(1),
  name: z.string().optional(),
  manufacturer: z.string().optional(),
  model: z.string().optional(),
  model_id: z.string().optional(),
  sw_version: z.string().optional(),
  hw_version: z.string().optional(),
  serial_number: z.string().optional(),
  suggested_area: z.string().optional(),
  configuration_url: z.string().optional(),
  connections: z.array(z.tuple([z.string(), z.string()])).optional(),
  via_device: z.string().optional(),
});
const common = {
  availability: z.array(availability).optional(),
  availability_mode: z.enum(['all', 'any', 'latest']).optional(),
  availability_topic: topic.optional(),
  device: device.optional(),
  origin: z.strictObject({ name: z.string(), sw_version: z.string().optional(), support_url: z.string().optional() }).optional(),
  enabled_by_default: z.boolean().optional(),
  encoding: z.string().optional(),
  entity_category: z.enum(['config', 'diagnostic']).optional(),
  icon: z.string().regex(/^mdi:[a-z0-9-]+$/).optional(),
  json_attributes_template: template.optional(),
  json_attributes_topic: topic.optional(),
  name: z.string().nullable().optional(),
  qos: z.union([z.literal(0), z.literal(1), z.literal(2)]).optional(),
  unique_id: z.string().optional(),
  value_template: template.optional(),
};
const homeAssistant = {
  lock: z.strictObject({
    ...common,
    command_topic: topic,
    command_template: template.optional(),
    code_format: z.string().optional(),
    optimistic: z.boolean().optional(),
    payload_lock: z.string().optional(),
    payload_unlock: z.string().optional(),
    payload_open: z.string().optional(),
    payload_reset: z.string().optional(),
    retain: z.boolean().optional(),
    state_topic: topic.optional(),
    state_jammed: z.string().optional(),
    state_locked: z.string().optional(),
    state_locking: z.string().optional(),
    state_open: z.string().optional(),
    state_opening: z.string().optional(),
    state_unlocked: z.string().optional(),
    state_unlocking: z.string().optional(),
  }),
  binary_sensor: z.strictObject({
    ...common,
    state_topic: topic,
    device_class: z
      .enum(['battery', 'battery_charging', 'carbon_monoxide', 'cold', 'connectivity', 'door', 'garage_door', 'gas', 'heat', 'light', 'lock', 'moisture', 'motion', 'moving', 'occupancy', 'opening', 'plug', 'power', 'presence', 'problem', 'running', 'safety', 'smoke', 'sound', 'tamper', 'update', 'vibration', 'window'])
      .optional(),
    expire_after: z.int().optional(),
    force_update: z.boolean().optional(),
    off_delay: z.int().optional(),
    payload_off: z.string().optional(),
    payload_on: z.string().optional(),
  }),
  sensor: z.strictObject({
    ...common,
    state_topic: topic,
    device_class: z.string().optional(),
    expire_after: z.int().optional(),
    force_update: z.boolean().optional(),
    last_reset_value_template: template.optional(),
    options: z.array(z.string()).optional(),
    state_class: z.enum(['measurement', 'measurement_angle', 'total', 'total_increasing']).optional(),
    suggested_display_precision: z.int().optional(),
    unit_of_measurement: z.string().optional(),
  }),
};
/** `<discovery_prefix>/<component>/[<node_id>/]<object_id>/config`, ids of letters, digits, _ and -. */
const DISCOVERY_TOPIC = /^homeassistant\/(lock|binary_sensor|sensor)\/([A-Za-z0-9_-]+)\/([A-Za-z0-9_-]+)\/config$/;

/** What Home Assistant makes of a payload with `{{ value_json.<field> }}`, the only template form the device uses. */
function render(valueTemplate: string, payload: string): string {
  const m = /^\{\{ value_json\.([a-z_]+) \}\}$/.exec(valueTemplate);
  assert.ok(m, `a template this test can evaluate: ${valueTemplate}`);
  return String((JSON.parse(payload) as Record<string, unknown>)[m[1]]);
}

describe('Home Assistant MQTT discovery: a lock, a contact sensor and a last-access sensor per door', function () {
  let broker: Awaited<ReturnType<typeof testBroker>>;
  let device: TestDevice | undefined;
  const deviceId = `ha-test-${process.pid}`;
  const configOf = (discovery: boolean) => ({
    device_id: deviceId,
    liveness: 'passive' as const,
    doors: [
      { id: 'main', name: 'Main entrance', relay: { driver: 'simulated', pulse_ms: 400 }, contact: { driver: 'simulated', pin: 5 } },
      { id: 'store', relay: { driver: 'simulated', pulse_ms: 400 } },
    ],
    mqtt: { url: broker.url, home_assistant: { discovery } },
  });

  before(async function () {
    broker = await testBroker();
  });
  afterEach(async function () {
    await device?.close();
    device = undefined;
  });
  after(async function () {
    // leave nothing retained behind on the shared broker
    const c = await mqtt.connectAsync(broker.url, { reconnectPeriod: 0 });
    for (const t of [`authface/${deviceId}/status`, `authface/${deviceId}/door/main/state`, `authface/${deviceId}/door/store/state`]) await c.publishAsync(t, '', { retain: true });
    for (const component of ['lock', 'binary_sensor', 'sensor']) for (const door of ['main', 'store']) await c.publishAsync(`homeassistant/${component}/${deviceId}/${door}/config`, '', { retain: true });
    await c.endAsync();
    await broker?.close();
  });

  it("every payload is one Home Assistant's documented schema accepts, and each state the door publishes is one its entity understands", async function () {
    device = await startTestDevice(configOf(true));
    const sub = await listen(broker.url, [`homeassistant/+/${deviceId}/+/config`, `authface/${deviceId}/#`]);
    try {
      const configs = () => sub.messages.filter((m) => DISCOVERY_TOPIC.test(m.topic) && m.payload.length > 0);
      await until(() => configs().length === 5, 10_000, 'five discovery messages');
      const byTopic = new Map(configs().map((m) => [m.topic, m]));
      assert.deepEqual([...byTopic.keys()].sort(), [
        `homeassistant/binary_sensor/${deviceId}/main/config`,
        `homeassistant/lock/${deviceId}/main/config`,
        `homeassistant/lock/${deviceId}/store/config`,
        `homeassistant/sensor/${deviceId}/main/config`,
        `homeassistant/sensor/${deviceId}/store/config`,
      ], 'a lock and a last-access sensor per door; a contact sensor only for the door with a contact');
      const uniqueIds = new Set<string>();
      for (const m of byTopic.values()) {
        assert.equal(m.retain, true, `${m.topic} is retained`);
        const component = DISCOVERY_TOPIC.exec(m.topic)![1] as keyof typeof homeAssistant;
        const parsed = homeAssistant[component].safeParse(JSON.parse(m.payload));
        assert.ok(parsed.success, `${m.topic}: ${parsed.error?.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
        const payload = parsed.data as { unique_id?: string; device?: { identifiers: string[] }; availability?: { topic: string }[] };
        assert.ok(payload.unique_id && !uniqueIds.has(payload.unique_id), 'a unique id of its own');
        uniqueIds.add(payload.unique_id);
        assert.deepEqual(payload.device?.identifiers, [`authface_${deviceId}`], 'all on one Home Assistant device');
        assert.equal(payload.availability?.[0].topic, `authface/${deviceId}/status`);
      }
      const lock = homeAssistant.lock.parse(JSON.parse(byTopic.get(`homeassistant/lock/${deviceId}/main/config`)!.payload));
      const contact = homeAssistant.binary_sensor.parse(JSON.parse(byTopic.get(`homeassistant/binary_sensor/${deviceId}/main/config`)!.payload));
      const lastAccess = homeAssistant.sensor.parse(JSON.parse(byTopic.get(`homeassistant/sensor/${deviceId}/main/config`)!.payload));
      assert.equal(contact.device_class, 'door');

      // availability: the device's retained status, rendered as Home Assistant does
      const latest = (t: string) => [...sub.messages].reverse().find((m) => m.topic === t);
      await until(() => latest(`authface/${deviceId}/status`) !== undefined, 5000, 'status');
      const available = lock.availability![0];
      assert.equal(render(available.value_template!, latest(available.topic)!.payload), available.payload_available);

      // the lock and the contact: their states as the door publishes them
      const stateNow = (field: 'lock' | 'contact') => {
        const m = latest(lock.state_topic!);
        return m && render(field === 'lock' ? lock.value_template! : contact.value_template!, m.payload);
      };
      await until(() => stateNow('lock') === lock.state_locked, 5000, 'locked at start');
      assert.equal(stateNow('contact'), contact.payload_off, 'closed at start');
      const access = device.svc.service.device!.access;
      const unlocked = access.unlock('main', 'test');
      assert.ok(unlocked);
      await until(() => stateNow('lock') === lock.state_unlocked, 5000, 'unlocked while the relay is released');
      (access.door('main')!.contact as SimulatedContact).set(true);
      await until(() => stateNow('contact') === contact.payload_on, 5000, 'the contact opens');
      (access.door('main')!.contact as SimulatedContact).set(false);
      await until(() => stateNow('lock') === lock.state_locked && stateNow('contact') === contact.payload_off, 5000, 'locked and closed again after the pulse');

      // the last access: the sensor's state and attributes from the door's access event
      const event = latest(lastAccess.state_topic);
      assert.ok(event, 'the access event of the remote opening');
      assert.equal(render(lastAccess.value_template!, event.payload), 'granted');
      assert.equal(lastAccess.json_attributes_topic, lastAccess.state_topic);
      assert.equal((JSON.parse(event.payload) as { reason: string }).reason, 'remote_unlock');

      // Home Assistant's lock button publishes here: the door does not obey a broker client
      const before = access.door('main')!.relay as unknown as { pulses: unknown[] };
      const pulses = before.pulses.length;
      const c = await mqtt.connectAsync(broker.url, { reconnectPeriod: 0 });
      await c.publishAsync(lock.command_topic, lock.payload_unlock ?? 'UNLOCK', { qos: 1 });
      await c.endAsync();
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(before.pulses.length, pulses, 'no pulse from an unsigned command');
    } finally {
      await sub.close();
    }
  });

  it('turned off, the device removes what it published', async function () {
    // a new subscriber gets the retained discovery
    const retained = async () => {
      const sub = await listen(broker.url, [`homeassistant/+/${deviceId}/+/config`]);
      await new Promise((r) => setTimeout(r, 300));
      await sub.close();
      return sub.messages.filter((m) => m.payload.length > 0).length;
    };
    assert.equal(await retained(), 5, 'what the last test published is still there');
    device = await startTestDevice(configOf(false));
    await until(async () => (await retained()) === 0, 10_000, 'no discovery retained');
  });
});
