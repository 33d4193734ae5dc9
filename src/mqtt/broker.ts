import crypto from 'node:crypto';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { Aedes, type AuthenticateError, type Client } from 'aedes';
import type { Logger } from '../core/logger.ts';
import { type BrokerIdentity, brokerAcl } from './acl.ts';
import { guardedConnection } from './packet-guard.ts';
import { type BrokerUser, readUsersFile, verifyPassword } from './users-file.ts';

export interface EmbeddedBrokerOptions {
  host: string;
  port: number;
  /** Topic prefix and device id: the ACL is written for this one device. */
  prefix: string;
  deviceId: string;
  /** Admins and observers (hashed passwords); without it only the device itself connects. */
  usersFile?: string;
  maxPacketBytes: number;
  logger: Logger;
}

/** The credentials the device's own MQTT client uses: made at start, never written anywhere. */
export interface DeviceCredentials {
  username: string;
  password: string;
  clientId: string;
}

/** CONNACK return codes of MQTT 3.1.1: 2 identifier rejected, 3 unavailable, 4 bad credentials. */
const refusal = (returnCode: 2 | 3 | 4, message: string): AuthenticateError => Object.assign(new Error(message), { returnCode: returnCode as number as AuthenticateError['returnCode'] });

/**
 * The embedded MQTT broker a device runs when no broker is configured, so a single box works on
 * its own. Nobody connects anonymously: the device uses credentials made at start; admins and
 * observers come from a users file of scrypt hashes. A client id belongs to its user (it is the
 * user name, or starts with `<name>-`), so no client can take over another's session. The ACL
 * (src/mqtt/acl.ts) lets only the device publish events and only an admin publish commands,
 * never retained. A packet larger than `maxPacketBytes` ends its connection before it is
 * buffered. It listens on the loopback interface by default.
 */
export class EmbeddedBroker {
  private constructor(
    private readonly broker: Aedes,
    private readonly server: net.Server,
    readonly device: DeviceCredentials,
  ) {}

  static async start(options: EmbeddedBrokerOptions): Promise<EmbeddedBroker> {
    const users = new Map<string, BrokerUser>((options.usersFile ? readUsersFile(options.usersFile) : []).map((u) => [u.name, u]));
    const suffix = crypto.randomBytes(6).toString('hex');
    const device: DeviceCredentials = {
      username: `device-${suffix}`,
      password: crypto.randomBytes(32).toString('base64url'),
      clientId: `device-${suffix}-${options.deviceId}`.slice(0, 64),
    };
    const acl = brokerAcl(options.prefix, options.deviceId);
    const identities = new WeakMap<Client, BrokerIdentity>();
    const log = options.logger;

    const broker = await Aedes.createBroker({
      maxClientsIdLength: 128,
      authenticate: (client, username, password, done) => {
        void identify(username, password).then(
          (who) => {
            if (!who) {
              log.warn({ client: client.id.slice(0, 64), user: username?.slice(0, 64) ?? null }, 'mqtt connection refused: bad user name or password');
              return done(refusal(4, 'bad user name or password'), false);
            }
            if (client.id !== username && !client.id.startsWith(`${username}-`)) {
              log.warn({ client: client.id.slice(0, 64), user: username }, 'mqtt connection refused: a client id must be the user name or start with "<user>-"');
              return done(refusal(2, 'client id not allowed for this user'), false);
            }
            identities.set(client, who);
            done(null, true);
          },
          () => done(refusal(3, 'broker unavailable'), false),
        );
      },
      authorizePublish: (client, packet, done) => {
        const who = client ? identities.get(client) : 'device'; // null: a will kept for a gone device
        if (who && acl.mayPublish(who, packet.topic, packet.retain)) return done(null);
        log.warn({ client: client?.id.slice(0, 64) ?? null, topic: packet.topic.slice(0, 200), retain: packet.retain }, 'mqtt publish refused by ACL');
        done(new Error('not authorised to publish here'));
      },
      authorizeSubscribe: (client, sub, done) => {
        const who = identities.get(client);
        if (who && acl.maySubscribe(who, sub.topic)) return done(null, sub);
        log.warn({ client: client.id.slice(0, 64), filter: sub.topic.slice(0, 200) }, 'mqtt subscription refused by ACL');
        done(null, null);
      },
    });

    async function identify(username: string | undefined, password: Buffer | undefined): Promise<BrokerIdentity | null> {
      if (!username || !password) return null;
      const given = password.toString('utf8');
      if (username === device.username) {
        const a = Buffer.from(given);
        const b = Buffer.from(device.password);
        return a.length === b.length && crypto.timingSafeEqual(a, b) ? 'device' : null;
      }
      const user = users.get(username);
      return user && (await verifyPassword(given, user.hash)) ? user.role : null;
    }

    const server = net.createServer((socket) => {
      const conn = guardedConnection(socket, options.maxPacketBytes, (declared) =>
        log.warn({ bytes: declared, limit: options.maxPacketBytes }, 'mqtt connection closed: packet too large'),
      );
      broker.handle(conn as unknown as net.Socket);
    });
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(options.port, options.host, () => resolve());
      });
    } catch (err) {
      // the broker's own timers (heartbeat, wills) would otherwise run on in a broker never used
      await new Promise<void>((resolve) => broker.close(() => resolve()));
      throw err;
    }
    return new EmbeddedBroker(broker, server, device);
  }

  get url(): string {
    const a = this.server.address() as AddressInfo;
    return `mqtt://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.broker.close(() => resolve()));
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
