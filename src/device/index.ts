import { AccessController } from '../access/controller.ts';
import type { DoorHardware } from '../access/hardware.ts';
import { KioskService } from '../access/kiosk.ts';
import type { EventBus } from '../core/events.ts';
import type { Logger } from '../core/logger.ts';
import { MqttBridge } from '../mqtt/bridge.ts';
import { EmbeddedBroker } from '../mqtt/broker.ts';
import type { SessionService } from '../sessions/service.ts';
import type { Store } from '../store/index.ts';
import type { DeviceConfig } from './config.ts';

export interface Device {
  config: DeviceConfig;
  access: AccessController;
  kiosk: KioskService;
  broker: EmbeddedBroker | null;
  mqtt: MqttBridge | null;
  close(): Promise<void>;
}

/**
 * The appliance side of the service: door control, the kiosk's sessions and MQTT. Features hang
 * off the event bus: the access controller listens for finished door sessions, the MQTT bridge
 * for decisions and alarms.
 */
export async function startDevice(
  config: DeviceConfig,
  deps: { hardware: DoorHardware; store: Store; sessions: SessionService; events: EventBus; logger: Logger; publicUrl: string; version: string },
): Promise<Device> {
  const tenant = config.tenant_id ? deps.store.tenants.get(config.tenant_id) : deps.store.tenants.byName('default');
  if (!tenant) {
    throw new Error(config.tenant_id ? `device config: no tenant ${config.tenant_id}` : 'device config: set tenant_id (there is no tenant named "default")');
  }
  const access = new AccessController(config, deps.hardware, tenant.id, deps.store.audit, deps.events, deps.logger);
  const kiosk = new KioskService(config, tenant, deps.sessions, deps.events, deps.publicUrl);

  let broker: EmbeddedBroker | null = null;
  let mqtt: MqttBridge | null = null;
  try {
    let url = config.mqtt.url;
    if (!url) {
      broker = await EmbeddedBroker.start(config.mqtt.embedded.host, config.mqtt.embedded.port);
      url = broker.url;
      deps.logger.info({ url }, 'embedded MQTT broker started');
    }
    mqtt = await MqttBridge.connect(config, url, { events: deps.events, access, kiosk, logger: deps.logger, version: deps.version });
    deps.logger.info({ url: url.replace(/\/\/[^@/]*@/, '//') }, 'connected to MQTT');
  } catch (err) {
    // doors keep working without MQTT; `authface doctor` says what is wrong
    deps.logger.error({ err: { name: (err as Error).name, message: (err as Error).message } }, 'MQTT unavailable: access events are not published');
    await broker?.close();
    broker = null;
  }
  deps.logger.info({ device: config.device_id, doors: config.doors.map((d) => d.id), tenant: tenant.id }, 'device ready');
  return {
    config,
    access,
    kiosk,
    broker,
    mqtt,
    async close() {
      await mqtt?.close().catch(() => undefined);
      await broker?.close();
      access.close();
    },
  };
}
