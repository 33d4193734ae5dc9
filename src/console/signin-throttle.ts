import net from 'node:net';

/**
 * Failed console sign-ins, counted per admin name *and* client address: each failure past the
 * first few makes the next try from that address for that name wait longer (1 s, 2 s, 4 s … up
 * to 15 minutes). An attacker's failures slow only the attacker: the admin signing in from
 * another address is never refused. The hub keeps the counts in PostgreSQL, shared by every hub
 * process; a door (one process) keeps them in memory.
 */
export interface SignInThrottle {
  /** Milliseconds to wait before this name may try again from this address (0: now). */
  wait(name: string, address: string): Promise<number>;
  failed(name: string, address: string): Promise<void>;
  succeeded(name: string, address: string): Promise<void>;
}

/** Failures that cost nothing (typos). */
export const FREE_FAILURES = 3;
export const MAX_WAIT_MS = 15 * 60_000;
/** A count is forgotten this long after its last failure. */
export const FORGET_AFTER_MS = 24 * 3_600_000;

/** How long the next try waits after `failures` failures, the last at `lastAt`. */
export function waitAfter(failures: number, lastAt: number, now = Date.now()): number {
  if (failures < FREE_FAILURES || now - lastAt > FORGET_AFTER_MS) return 0;
  const delay = Math.min(MAX_WAIT_MS, 1000 * 2 ** (failures - FREE_FAILURES));
  return Math.max(0, lastAt + delay - now);
}

export class MemorySignInThrottle implements SignInThrottle {
  readonly #counts = new Map<string, { failures: number; lastAt: number }>();

  async wait(name: string, address: string): Promise<number> {
    const c = this.#counts.get(key(name, address));
    return c ? waitAfter(c.failures, c.lastAt) : 0;
  }

  async failed(name: string, address: string): Promise<void> {
    const now = Date.now();
    const k = key(name, address);
    const c = this.#counts.get(k);
    this.#counts.set(k, { failures: c && now - c.lastAt <= FORGET_AFTER_MS ? c.failures + 1 : 1, lastAt: now });
    if (this.#counts.size > 10_000) for (const [x, v] of this.#counts) if (now - v.lastAt > FORGET_AFTER_MS || this.#counts.size > 10_000) this.#counts.delete(x);
  }

  async succeeded(name: string, address: string): Promise<void> {
    this.#counts.delete(key(name, address));
  }
}

const key = (name: string, address: string) => JSON.stringify([name, address]);

/**
 * The client's address: the connection's, or, when the connection comes from a trusted proxy
 * (AUTHFACE_TRUSTED_PROXIES), the last address in X-Forwarded-For that is not one of them. A
 * client cannot choose its address by sending the header itself: without a trusted proxy in
 * front, the header is ignored.
 */
export function clientAddress(remote: string | undefined, forwardedFor: string | string[] | undefined, trusted: net.BlockList): string {
  let address = normalise(remote ?? '');
  if (!isTrusted(address, trusted) || !forwardedFor) return address;
  const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor).split(',').map((h) => normalise(h.trim())).filter((h) => net.isIP(h) !== 0);
  for (let i = hops.length - 1; i >= 0; i--) {
    address = hops[i];
    if (!isTrusted(address, trusted)) break;
  }
  return address;
}

/** `10.0.0.1, 10.1.0.0/16, ::1` as a block list (AUTHFACE_TRUSTED_PROXIES). */
export function trustedProxies(list: readonly string[]): net.BlockList {
  const blocks = new net.BlockList();
  for (const entry of list) {
    const [ip, bits] = entry.split('/');
    const type = net.isIP(ip) === 6 ? 'ipv6' : 'ipv4';
    if (bits === undefined) blocks.addAddress(ip, type);
    else blocks.addSubnet(ip, Number(bits), type);
  }
  return blocks;
}

function isTrusted(address: string, trusted: net.BlockList): boolean {
  const type = net.isIP(address);
  return type !== 0 && trusted.check(address, type === 6 ? 'ipv6' : 'ipv4');
}

/** An IPv4 address as IPv6 (`::ffff:1.2.3.4`) is the IPv4 address. */
function normalise(address: string): string {
  return address.startsWith('::ffff:') && net.isIPv4(address.slice(7)) ? address.slice(7) : address;
}
