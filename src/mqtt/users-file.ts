import crypto from 'node:crypto';
import fs from 'node:fs';
import { OperatorError } from '../errors.ts';

/**
 * The embedded broker's users: one line each, `name:role:scrypt$N$r$p$salt$hash`. Only the
 * scrypt hash of a password is kept. Managed with `authface broker passwd`.
 */
export type BrokerRole = 'admin' | 'observer';

export interface BrokerUser {
  name: string;
  role: BrokerRole;
  hash: string;
}

const SCRYPT = { N: 16384, r: 8, p: 1 };
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;

export function hashPassword(password: string): string {
  const salt = crypto.randomBytes(16);
  const hash = crypto.scryptSync(password, salt, 32, SCRYPT);
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

/** Off the event loop (libuv's pool): a client guessing passwords cannot stall the doors. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [kind, n, r, p, salt, hash] = stored.split('$');
  if (kind !== 'scrypt' || !salt || !hash) return false;
  const expected = Buffer.from(hash, 'base64');
  const actual = await new Promise<Buffer>((resolve, reject) =>
    crypto.scrypt(password, Buffer.from(salt, 'base64'), expected.length, { N: Number(n), r: Number(r), p: Number(p), maxmem: 64 * 1024 * 1024 }, (err, key) =>
      err ? reject(err) : resolve(key),
    ),
  );
  return crypto.timingSafeEqual(actual, expected);
}

export function readUsersFile(file: string): BrokerUser[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new OperatorError(`mqtt.embedded.users_file ${file} cannot be read (${(err as NodeJS.ErrnoException).code}): create it with \`authface broker passwd --file ${file} --user <name> --role admin\``);
  }
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((line, i) => {
      const [name, role, hash] = line.split(':');
      if (!NAME.test(name ?? '') || (role !== 'admin' && role !== 'observer') || !hash?.startsWith('scrypt$')) {
        throw new OperatorError(`${file}, line ${i + 1}: expected name:admin|observer:scrypt$…, as \`authface broker passwd\` writes it`);
      }
      return { name, role, hash };
    });
}

/** Adds or replaces a user; the file is written 0600. */
export function setUser(file: string, user: { name: string; role: BrokerRole; password: string }): void {
  if (!NAME.test(user.name)) throw new OperatorError('a broker user name is 1-64 letters, digits, _ . or -');
  if (user.password.length < 12) throw new OperatorError('use a broker password of at least 12 characters');
  const others = fs.existsSync(file) ? readUsersFile(file).filter((u) => u.name !== user.name) : [];
  const lines = [...others, { name: user.name, role: user.role, hash: hashPassword(user.password) }].map((u) => `${u.name}:${u.role}:${u.hash}`);
  fs.writeFileSync(file, `${lines.join('\n')}\n`, { mode: 0o600 });
  fs.chmodSync(file, 0o600);
}
