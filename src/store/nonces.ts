import { type Db, now } from './database.ts';

/**
 * Nonces of remote commands already carried out. A nonce is kept for as long as its command
 * could still pass the device's time check, in the database so a restart cannot make a replay
 * succeed.
 */
export class CommandNonces {
  constructor(private readonly db: Db) {}

  /** Records the nonce until `keepUntil`; false when it was seen before (a replay). */
  claim(nonce: string, keepUntil: string): boolean {
    return this.db.transaction(() => {
      this.db.prepare('DELETE FROM command_nonces WHERE keep_until < ?').run(now());
      return this.db.prepare('INSERT INTO command_nonces (nonce, keep_until) VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING').run(nonce, keepUntil).changes === 1;
    })();
  }
}
