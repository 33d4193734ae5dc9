import { Duplex, Transform, type TransformCallback } from 'node:stream';

/**
 * Reads the MQTT fixed header of every packet a client sends (a type byte and the "remaining
 * length", 1 to 4 bytes of 7 bits) and ends the connection at the first packet larger than
 * `maxBytes`, before its body is buffered anywhere. The broker sees only packets within the limit.
 */
export class PacketSizeGuard extends Transform {
  /** Bytes of the current packet's body still to pass. */
  #remaining = 0;
  /** The header being read: its type byte and length bytes so far. */
  #header: number[] = [];

  constructor(
    private readonly maxBytes: number,
    private readonly onOversize: (declared: number) => void,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.#remaining > 0) {
        const take = Math.min(this.#remaining, chunk.length - i);
        this.#remaining -= take;
        i += take;
        continue;
      }
      this.#header.push(chunk[i++]);
      if (this.#header.length === 1) continue; // the type byte
      const last = this.#header[this.#header.length - 1];
      if (last & 0x80) {
        if (this.#header.length > 4) return done(new Error('malformed MQTT remaining length'));
        continue;
      }
      let length = 0;
      for (let k = this.#header.length - 1; k >= 1; k--) length = length * 128 + (this.#header[k] & 0x7f);
      const total = this.#header.length + length;
      this.#header = [];
      if (total > this.maxBytes) {
        this.onOversize(total);
        return done(new Error(`MQTT packet of ${total} bytes exceeds ${this.maxBytes}`));
      }
      this.#remaining = length;
    }
    done(null, chunk);
  }
}

/** The socket as the broker should see it: reads pass the guard, writes go straight out. */
export function guardedConnection(socket: import('node:net').Socket, maxBytes: number, onOversize: (declared: number) => void): Duplex {
  const guard = new PacketSizeGuard(maxBytes, onOversize);
  guard.on('error', () => socket.destroy());
  socket.pipe(guard);
  const conn = Duplex.from({ readable: guard, writable: socket });
  socket.on('close', () => conn.destroy());
  return conn;
}
