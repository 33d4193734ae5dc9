import crypto from 'node:crypto';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { Waiters } from '../core/waiters.ts';
import { HubError } from './errors.ts';

const CONTROL = '$CONTROL/dynamic-security/v1';
const HUB_ROLE = 'authface-hub';
const ANSWER_TIMEOUT_MS = 10_000;

interface Answer {
  error?: string;
  data?: unknown;
}

interface Acl {
  acltype: 'publishClientSend' | 'publishClientReceive' | 'subscribePattern' | 'unsubscribePattern';
  topic: string;
  allow: boolean;
  priority?: number;
}

/** The broker rights of one device, as topics (the same list documents the EMQX equivalent). */
export function deviceRights(prefix: string, tenantId: string, deviceId: string): { publish: string[]; subscribe: string[] } {
  const sync = `${prefix}/sync/${tenantId}`;
  const own = `${prefix}/${deviceId}`;
  return {
    // its own state and events: door events, status and command results, and what it sends the hub
    // (and Home Assistant's discovery of its doors under the default prefix)
    publish: [`${own}/status`, `${own}/door/+/access`, `${own}/door/+/alarm`, `${own}/door/+/state`, `homeassistant/+/${deviceId}/+/config`, `${own}/command/result`, ...['submit', 'fetch', 'snapshot', 'events', 'state'].map((k) => `${sync}/${k}/${deviceId}`)],
    // its tenant's log and head (signed, and unsigned for a device of an earlier release), the
    // hub's replies and notices to it, and its own command topic
    subscribe: [`${sync}/signed/log`, `${sync}/signed/head`, `${sync}/log`, `${sync}/head`, `${sync}/device/${deviceId}`, `${sync}/notice/${deviceId}`, `${own}/command`],
  };
}

/** A device's broker client and role: named by tenant and device. */
function brokerName(tenantId: string, deviceId: string): { username: string; role: string } {
  return { username: `${tenantId}/${deviceId}`, role: `authface-device-${tenantId}/${deviceId}` };
}

/** The names a device that joined before broker names held the tenant has (the device id alone). */
function legacyBrokerName(deviceId: string): { username: string; role: string } {
  return { username: deviceId, role: `authface-device-${deviceId}` };
}

/**
 * The hub as administrator of Mosquitto's dynamic security plugin: each device that joins gets a
 * broker client of its own (a random password, given to the device once) and a role with exactly
 * the rights of deviceRights; nothing else. The hub's own user gets a role for the sync topics.
 */
export class BrokerAdmin {
  readonly #waiting = new Waiters<Answer[]>();

  private constructor(
    private readonly client: MqttClient,
    private readonly prefix: string,
  ) {}

  /** Connects as the hub's broker user, which must hold the plugin's admin role. */
  static async connect(url: string, prefix: string, options: IClientOptions = {}): Promise<BrokerAdmin> {
    const client = await mqtt.connectAsync(url, { ...options, clientId: `authface-hub-admin-${crypto.randomBytes(6).toString('hex')}`, protocolVersion: 5, reconnectPeriod: 1000 });
    const admin = new BrokerAdmin(client, prefix);
    client.on('message', (_topic, payload) => admin.#answer(payload));
    const granted = await client.subscribeAsync(`${CONTROL}/response`, { qos: 1 });
    if (granted.some((g) => g.qos > 2)) {
      await client.endAsync();
      throw new HubError("the hub's broker user may not administer the broker's dynamic security plugin: give it the plugin's admin role (mosquitto_ctrl dynsec init …)");
    }
    return admin;
  }

  async close(): Promise<void> {
    await this.client.endAsync();
  }

  /**
   * Lets the hub's own user publish and read the sync topics (the plugin's admin role may only
   * read them). Adding a role to a client makes the broker disconnect it: the hub's connections
   * reconnect by themselves, and the role is checked again once this one is back.
   */
  async allowHub(username: string): Promise<void> {
    if (await this.#hasRole(username, HUB_ROLE)) return;
    const topic = `${this.prefix}/sync/#`;
    const results = `${this.prefix}/+/command/result`;
    const acls: Acl[] = [
      { acltype: 'publishClientSend', topic, allow: true },
      { acltype: 'publishClientReceive', topic, allow: true },
      { acltype: 'subscribePattern', topic, allow: true },
      // the commands it signs, and their results
      { acltype: 'publishClientSend', topic: `${this.prefix}/+/command`, allow: true },
      { acltype: 'publishClientReceive', topic: results, allow: true },
      { acltype: 'subscribePattern', topic: results, allow: true },
    ];
    await this.#run([{ command: 'createRole', rolename: HUB_ROLE, acls }], ['Role already exists']);
    const reconnected = new Promise<void>((resolve) => this.client.once('connect', () => resolve()));
    await this.client.publishAsync(CONTROL, JSON.stringify({ commands: [{ command: 'addClientRole', username, rolename: HUB_ROLE }] }), { qos: 1 });
    await Promise.race([reconnected, new Promise((r) => setTimeout(r, ANSWER_TIMEOUT_MS))]);
    if (!(await this.#hasRole(username, HUB_ROLE))) throw new HubError(`the broker did not give the hub's user ${username} the role ${HUB_ROLE}`);
  }

  async #hasRole(username: string, rolename: string): Promise<boolean> {
    const [answer] = await this.#run([{ command: 'getClient', username }]);
    const client = (answer.data as { client?: { roles?: { rolename: string }[] } } | undefined)?.client;
    return client?.roles?.some((r) => r.rolename === rolename) ?? false;
  }

  /**
   * A broker client for a device that joins (any earlier one of that name is replaced); returns its
   * credentials. Its name is `<tenant>/<device>`, so no join in one tenant can replace another
   * tenant's client. A device of an earlier release (`legacyName`) accepts only names of up to 64
   * characters and gets the bare device id, as before.
   */
  async addDevice(tenantId: string, deviceId: string, { legacyName = false } = {}): Promise<{ username: string; password: string }> {
    const name = legacyName ? legacyBrokerName(deviceId) : brokerName(tenantId, deviceId);
    const acls = this.#deviceAcls(tenantId, deviceId);
    const password = crypto.randomBytes(24).toString('base64url');
    await this.removeDevice(tenantId, deviceId);
    await this.#run([
      { command: 'createRole', rolename: name.role, acls },
      { command: 'createClient', username: name.username, password, roles: [{ rolename: name.role }] },
    ]);
    return { username: name.username, password };
  }

  /**
   * Gives a device that joined with an earlier release the rights of this one (the signed log and
   * head): each right is added to its role (under either name), and one it holds already is left as it is.
   */
  async updateDevice(tenantId: string, deviceId: string): Promise<void> {
    for (const { role } of [brokerName(tenantId, deviceId), legacyBrokerName(deviceId)]) {
      await this.#run(
        this.#deviceAcls(tenantId, deviceId).map((acl) => ({ command: 'addRoleACL', rolename: role, ...acl })),
        ['ACL with this topic already exists', 'Role not found'],
      );
    }
  }

  #deviceAcls(tenantId: string, deviceId: string): Acl[] {
    const { publish, subscribe } = deviceRights(this.prefix, tenantId, deviceId);
    return [
      ...publish.map((topic): Acl => ({ acltype: 'publishClientSend', topic, allow: true })),
      ...subscribe.flatMap((topic): Acl[] => [
        { acltype: 'subscribePattern', topic, allow: true },
        { acltype: 'publishClientReceive', topic, allow: true },
      ]),
    ];
  }

  /** Removes a device's broker client and role, under either name: it can no longer connect (revocation). */
  async removeDevice(tenantId: string, deviceId: string): Promise<void> {
    const names = [brokerName(tenantId, deviceId), legacyBrokerName(deviceId)];
    await this.#run(
      names.flatMap(({ username, role }) => [
        { command: 'deleteClient', username },
        { command: 'deleteRole', rolename: role },
      ]),
      ['Client not found', 'Role not found'],
    );
  }

  /** Sends commands and waits for their answers; an error not in `tolerated` fails the call. */
  async #run(commands: Record<string, unknown>[], tolerated: string[] = []): Promise<Answer[]> {
    if (!this.client.connected) throw new HubError('the hub is not connected to the broker, so it cannot manage its clients');
    const correlation = crypto.randomUUID();
    const answered = this.#waiting.wait(correlation, ANSWER_TIMEOUT_MS);
    await this.client.publishAsync(CONTROL, JSON.stringify({ commands: commands.map((c, i) => ({ ...c, correlationData: `${correlation}:${i}` })) }), { qos: 1 });
    const answers = await answered;
    if (!answers) throw new HubError('the broker did not answer the dynamic security commands: is its dynamic security plugin loaded?');
    const failed = answers.find((a) => a.error && !tolerated.includes(a.error));
    if (failed) throw new HubError(`the broker refused a dynamic security command: ${failed.error}`);
    return answers;
  }

  #answer(payload: Buffer): void {
    let parsed: { responses?: (Answer & { correlationData?: string })[] };
    try {
      parsed = JSON.parse(payload.toString('utf8')) as typeof parsed;
    } catch {
      return;
    }
    const responses = parsed.responses ?? [];
    const correlation = responses[0]?.correlationData?.split(':')[0];
    if (correlation) this.#waiting.settle(correlation, responses);
  }
}
