import type { DeviceConfig } from '../device/config.ts';
import { topicsFor } from './topics.ts';

/**
 * Home Assistant MQTT discovery (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery),
 * as Zigbee2MQTT and Double Take publish it: for each door, retained under
 * `<discovery prefix>/<component>/<device_id>/<door_id>/config`,
 * - a `lock` whose state is the door's lock (LOCKED, or UNLOCKED while the relay is released);
 * - a `binary_sensor` (device class door) for the contact, when the door has one;
 * - a `sensor` whose state is the last access decision (granted or denied), with the person,
 *   reason and time as attributes.
 * All three follow the device's status for availability. Home Assistant cannot open the door: the
 * lock's command topic is one the device does not listen to, since a remote unlock must be signed
 * by the hub (a broker client, Home Assistant included, is never obeyed).
 */
export type HomeAssistantComponent = 'lock' | 'binary_sensor' | 'sensor';

export interface DiscoveryMessage {
  component: HomeAssistantComponent;
  topic: string;
  payload: Record<string, unknown>;
}

/** Every discovery message of the device (its doors' entities), enabled or not (to publish, or to clear). */
export function discoveryMessages(config: DeviceConfig, version: string): DiscoveryMessage[] {
  const { discovery_prefix: prefix } = config.mqtt.home_assistant;
  const topics = topicsFor(config.mqtt.topic_prefix, config.device_id);
  const device = {
    identifiers: [`authface_${config.device_id}`],
    name: `Auth Face ${config.device_id}`,
    manufacturer: 'Auth Face',
    model: 'Face access door controller',
    sw_version: version,
  };
  const common = {
    availability: [{ topic: topics.status, value_template: '{{ value_json.state }}', payload_available: 'online', payload_not_available: 'offline' }],
    device,
    origin: { name: 'Auth Face', sw_version: version },
  };
  return config.doors.flatMap((door): DiscoveryMessage[] => {
    const id = `authface_${config.device_id}_${door.id}`;
    const topic = (component: HomeAssistantComponent) => `${prefix}/${component}/${config.device_id}/${door.id}/config`;
    const messages: DiscoveryMessage[] = [
      {
        component: 'lock',
        topic: topic('lock'),
        payload: {
          ...common,
          name: `${door.name ?? door.id} lock`,
          unique_id: `${id}_lock`,
          state_topic: topics.state(door.id),
          value_template: '{{ value_json.lock }}',
          state_locked: 'locked',
          state_unlocked: 'unlocked',
          // required by Home Assistant; the device does not listen here (see above)
          command_topic: `${topics.base}/door/${door.id}/lock/set`,
        },
      },
      {
        component: 'sensor',
        topic: topic('sensor'),
        payload: {
          ...common,
          name: `${door.name ?? door.id} last access`,
          unique_id: `${id}_last_access`,
          state_topic: topics.access(door.id),
          value_template: '{{ value_json.result }}',
          json_attributes_topic: topics.access(door.id),
          icon: 'mdi:face-recognition',
        },
      },
    ];
    if (door.contact) {
      messages.push({
        component: 'binary_sensor',
        topic: topic('binary_sensor'),
        payload: {
          ...common,
          name: `${door.name ?? door.id} contact`,
          unique_id: `${id}_contact`,
          device_class: 'door',
          state_topic: topics.state(door.id),
          value_template: '{{ value_json.contact }}',
          payload_on: 'open',
          payload_off: 'closed',
        },
      });
    }
    return messages;
  });
}
