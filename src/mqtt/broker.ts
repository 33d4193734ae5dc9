import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { Aedes } from 'aedes';

/**
 * The embedded MQTT broker a device runs when no broker is configured, so a single box works on
 * its own. It listens on the loopback interface by default.
 */
export class EmbeddedBroker {
  private constructor(
    private readonly broker: Aedes,
    private readonly server: net.Server,
  ) {}

  static async start(host: string, port: number): Promise<EmbeddedBroker> {
    const broker = await Aedes.createBroker();
    const server = net.createServer(broker.handle as (socket: net.Socket) => void);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    return new EmbeddedBroker(broker, server);
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
