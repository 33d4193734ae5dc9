import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { hashSecret, secretMatches } from '../core/secrets.ts';

export const KIOSK_SECRET_FILE = 'kiosk.secret';
/** The header the kiosk shell adds to every request it makes to the local service. */
export const KIOSK_HEADER = 'x-authface-kiosk';

/**
 * The per-device secret that makes a request the door's own kiosk screen. The peer address
 * cannot tell: behind a reverse proxy on the same box every request comes from 127.0.0.1. Only
 * the local kiosk shell reads this 0600 file of the data directory and adds it as a header; the
 * page's own scripts never see it. Kept in memory as a hash, compared in constant time.
 */
export class KioskSecret {
  private constructor(
    private readonly hash: Buffer,
    /** Where it is kept: the refusal of a request without it names the file. */
    readonly file: string,
  ) {}

  /** Reads `<dataDir>/kiosk.secret`, creating it (0600) on first start. */
  static load(dataDir: string): KioskSecret {
    const file = path.join(dataDir, KIOSK_SECRET_FILE);
    try {
      fs.writeFileSync(file, `${crypto.randomBytes(32).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    return new KioskSecret(hashSecret(fs.readFileSync(file, 'utf8').trim()), file);
  }

  matches(given: string | undefined): boolean {
    return secretMatches(given, this.hash);
  }
}
