import net from 'node:net';
import mqttPacket, { type Packet } from 'mqtt-packet';

export interface ChaosProxy {
  url: string;
  /** PUBLISH packets sent twice, and pairs sent in swapped order, in both directions. */
  stats: { duplicated: number; reordered: number };
  close(): Promise<void>;
}

/**
 * A TCP proxy between MQTT 5 clients and a broker that misbehaves at the packet level, as a
 * broker, a bridge or a flaky network can: every PUBLISH is delivered twice (the second marked
 * dup), and each PUBLISH waits for the next one and goes after it (swapped pairs), in both
 * directions. Other packets pass at once.
 */
export async function startChaosProxy(brokerPort: number): Promise<ChaosProxy> {
  const stats = { duplicated: 0, reordered: 0 };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const broker = net.connect(brokerPort, '127.0.0.1');
    for (const s of [client, broker]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.on('close', () => broker.destroy());
    broker.on('close', () => client.destroy());
    scramble(client, broker, stats);
    scramble(broker, client, stats);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    stats,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function scramble(from: net.Socket, to: net.Socket, stats: ChaosProxy['stats']): void {
  const parser = mqttPacket.parser({ protocolVersion: 5 });
  let held: Packet | null = null;
  let flushTimer: NodeJS.Timeout | undefined;
  const write = (packet: Packet) => {
    if (!to.destroyed) to.write(mqttPacket.generate(packet, { protocolVersion: 5 }));
  };
  const flushHeld = () => {
    if (held) write(held);
    held = null;
  };
  parser.on('packet', (packet: Packet) => {
    if (packet.cmd !== 'publish') return write(packet);
    const copies = [packet, { ...packet, dup: packet.qos > 0 }];
    stats.duplicated++;
    if (held) {
      // this one first, then the one that came before it
      for (const p of copies) write(p);
      flushHeld();
      stats.reordered++;
      clearTimeout(flushTimer);
      return;
    }
    held = copies[0];
    write(copies[1]);
    // a lone PUBLISH is not held for ever
    clearTimeout(flushTimer);
    flushTimer = setTimeout(flushHeld, 30);
  });
  parser.on('error', (err: Error) => {
    from.destroy(err);
  });
  from.on('data', (chunk) => parser.parse(chunk));
}
