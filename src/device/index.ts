import { AccessController } from '../access/controller.ts';
import { type MemberOf, fileGroups } from '../access/policy.ts';
import type { DoorHardware } from '../access/hardware.ts';
import { KioskService } from '../access/kiosk.ts';
import { KioskSecret } from '../access/kiosk-secret.ts';
import { PinGate } from '../access/pin-gate.ts';
import { type CommandReply, RemoteCommands } from '../access/remote-commands.ts';
import type { EventBus } from '../core/events.ts';
import type { Logger } from '../core/logger.ts';
import { MqttBridge, type MqttLink, brokerOptions, unavailableLink } from '../mqtt/bridge.ts';
import { EmbeddedBroker } from '../mqtt/broker.ts';
import type { SessionService } from '../sessions/service.ts';
import type { Store } from '../store/index.ts';
import { DeviceSync } from '../sync/device-sync.ts';
import { loadSigningKey } from '../sync/device-key.ts';
import { loadKeyring } from '../sync/keyring.ts';
import { signMessage } from '../sync/signature.ts';
import { assertNotRevoked } from '../sync/revoked.ts';
import { publicKeyFromBase64 } from '../access/signed-command.ts';
import { FLEET_MODEL } from '../sync/fleet-model.ts';
import { fleetPinKeeper } from '../sync/fleet-pins.ts';
import { fleetPinTag } from '../sync/pin-envelope.ts';
import type { UserService } from '../users/service.ts';
import type { GalleryIndex } from '../biometrics/gallery.ts';
import { type DeviceConfig, DeviceConfigError } from './config.ts';
import { type OutOfService, ServiceState } from './out-of-service.ts';

/** How long a fleet door that has just (re)connected waits to catch up before a decision. */
const CATCH_UP_WAIT_MS = 3000;
/** How long an enrolment or update waits for the hub's fleet-wide check before the door writes on its own. */
const HUB_COMMIT_WAIT_MS = 2000;
/** A PIN set at a fleet door waits this long for the hub to sequence it and the log to bring it back. */
const HUB_PIN_WAIT_MS = 5000;

export interface Device {
  config: DeviceConfig;
  access: AccessController;
  kiosk: KioskService;
  /** What makes a request the door's own kiosk screen (see src/access/kiosk-secret.ts). */
  kioskSecret: KioskSecret;
  commands: RemoteCommands;
  broker: EmbeddedBroker | null;
  mqtt: MqttBridge | null;
  /** Fleet sync through the hub (the device file's `sync`), or null. */
  sync: DeviceSync | null;
  /** The broker link as it is now (connected, retrying, or why it is unavailable). */
  mqttLink(): MqttLink;
  /** Why this device serves no one (the hub revoked it), or null while it serves. */
  outOfService(): OutOfService | null;
  close(): Promise<void>;
}

/**
 * The appliance side of the service: door control, the kiosk's sessions and MQTT. Features hang
 * off the event bus: the access controller listens for finished door sessions, the MQTT bridge
 * for decisions and alarms. Remote commands arrive over MQTT and are judged by RemoteCommands.
 */
export async function startDevice(
  config: DeviceConfig,
  deps: { hardware: DoorHardware; store: Store; index: GalleryIndex; sessions: SessionService; users: UserService; events: EventBus; logger: Logger; publicUrl: string; version: string },
): Promise<Device> {
  // a fleet device takes its tenant from the hub: the first start makes it here, with the hub's id
  if (config.sync && config.tenant_id && !deps.store.tenants.get(config.tenant_id)) {
    deps.store.tenants.create({ id: config.tenant_id, name: 'fleet', allowedOrigins: [], livenessMode: 'active' });
  }
  const tenant = config.tenant_id ? deps.store.tenants.get(config.tenant_id) : deps.store.tenants.byName('default');
  if (!tenant) {
    throw new DeviceConfigError(
      config.tenant_id
        ? `tenant_id ${config.tenant_id} of the device file is not a tenant of this service (authface tenant list)`
        : 'the device file has no tenant_id and there is no tenant named "default": set tenant_id (authface tenant list)',
    );
  }
  // a fleet door's groups are the hub's (user.groups of the log); a standalone door's, its file's
  const memberOf: MemberOf = config.sync ? (group, user) => deps.store.groups.isMember(tenant.id, group, user) : fileGroups(config);
  const state = new ServiceState(deps.events);
  const access = new AccessController(config, deps.hardware, tenant.id, deps.store.audit, deps.events, deps.logger, memberOf, state);
  const pins = new PinGate(config, tenant.id, deps.store.pins, deps.store.audit, deps.events, deps.logger);
  let sync: DeviceSync | null = null;
  const kiosk = new KioskService(config, () => deps.store.tenants.get(tenant.id) ?? tenant, deps.sessions, deps.events, deps.publicUrl, pins, state, async () => {
    if (sync && !(await sync.whenCaughtUp(CATCH_UP_WAIT_MS))) deps.logger.warn({ wait_ms: CATCH_UP_WAIT_MS }, 'sync: the hub did not answer in time; the door decides on its own copy');
  });
  const kioskSecret = KioskSecret.load(deps.store.dataDir);
  const commands = new RemoteCommands(config, { access, kiosk, nonces: deps.store.nonces, logger: deps.logger });

  // the fleet's tenant key is opened first: a missing or foreign key file, or a device the hub
  // revoked, stops the start here
  if (config.sync) assertNotRevoked(deps.store, config.device_id);
  const keyring = config.sync ? loadKeyring(config.sync.tenant_key_file, deps.store.dataDir, { tenantId: tenant.id, deviceId: config.device_id }) : null;
  let broker: EmbeddedBroker | null = null;
  let mqtt: MqttBridge | null = null;
  let link: MqttLink | null = null;
  const url = config.mqtt.url ?? null;
  try {
    if (!url) {
      const { host, port, users_file } = config.mqtt.embedded;
      broker = await EmbeddedBroker.start({
        host,
        port,
        prefix: config.mqtt.topic_prefix,
        deviceId: config.device_id,
        usersFile: users_file,
        maxPacketBytes: config.mqtt.max_packet_bytes,
        logger: deps.logger,
      }).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'EADDRINUSE') throw new Error(`the embedded broker cannot listen on ${host}:${port}: the port is in use (another broker?); set mqtt.embedded.port, or mqtt.url to use that broker`);
        throw err;
      });
      deps.logger.info({ url: broker.url }, 'embedded MQTT broker started');
    }
    // in a fleet the hub sends commands and takes a result only with this device's signature
    const signing = config.sync ? loadSigningKey(deps.store.dataDir) : null;
    const signResult = signing ? (reply: CommandReply) => signMessage(signing.privateKey, 'command-result', tenant.id, { ...reply, from: config.device_id }) : undefined;
    mqtt = await MqttBridge.start(config, url ?? (broker as EmbeddedBroker).url, { events: deps.events, commands, logger: deps.logger, version: deps.version, credentials: broker?.device, doors: () => access.statuses(), signResult });
  } catch (err) {
    // doors keep working without MQTT; /readyz, doctor and the device status say what is wrong
    link = unavailableLink(url, (err as Error).message);
    deps.logger.error({ problem: link.error }, 'MQTT unavailable: access events are not published');
    await broker?.close();
    broker = null;
  }
  if (config.sync && url && keyring) {
    const { public_key: commandKey } = config.remote_commands;
    sync = DeviceSync.start(deps.store, deps.index, deps.events, {
      deviceId: config.device_id,
      tenantId: tenant.id,
      url,
      prefix: config.mqtt.topic_prefix,
      broker: brokerOptions(config.mqtt),
      keyring,
      keyFile: config.sync.tenant_key_file,
      hubKey: publicKeyFromBase64(commandKey as string), // the device file requires it with sync (device/config.ts)
      hubUrl: config.sync.hub_url,
      secretFiles: config.mqtt.password_file ? [config.mqtt.password_file] : [],
      model: FLEET_MODEL,
      softwareVersion: deps.version,
      doors: config.doors.map((d) => d.id),
      logger: deps.logger,
    });
    const fleet = sync;
    deps.sessions.commitWritesThrough((tenantId, write) => (tenantId === tenant.id ? fleet.commitThroughHub(write, HUB_COMMIT_WAIT_MS) : Promise.resolve({ status: 'unreachable' })));
    // the tenant's PINs are the log's: set through the hub, found with each version of the tenant key
    deps.users.keepPinsWith(fleetPinKeeper(fleet, tenant.id, deps.store.pins, HUB_PIN_WAIT_MS));
  }
  if (keyring) {
    const ring = keyring;
    deps.store.pins.findFleetPins(tenant.id, (pin) => ring.versions().map((v) => ({ keyVersion: v, tag: fleetPinTag(ring.key(v) as Buffer, tenant.id, pin) })));
  }
  deps.logger.info({ device: config.device_id, doors: config.doors.map((d) => d.id), tenant: tenant.id, remote_commands: commands.enabled, sync: sync !== null }, 'device ready');
  return {
    config,
    access,
    kiosk,
    kioskSecret,
    commands,
    broker,
    mqtt,
    mqttLink: () => mqtt?.link ?? (link as MqttLink),
    outOfService: () => state.outOfService,
    sync,
    async close() {
      deps.sessions.commitWritesThrough(null);
      await sync?.close().catch(() => undefined);
      await mqtt?.close().catch(() => undefined);
      await broker?.close();
      access.close();
      pins.close();
      state.close();
    },
  };
}
