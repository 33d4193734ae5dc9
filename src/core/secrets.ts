import crypto from 'node:crypto';

/**
 * Secrets (API keys, capture tokens, the kiosk secret, the metrics token) are 32 random bytes or
 * more: their SHA-256 is what is stored and kept, so a leaked database or memory dump leaks none.
 */
export function hashSecret(secret: string): Buffer {
  return crypto.createHash('sha256').update(secret).digest();
}

/** Whether `given` is the secret of `hash`, compared in constant time. */
export function secretMatches(given: string | undefined, hash: Buffer): boolean {
  return given !== undefined && given !== '' && crypto.timingSafeEqual(hashSecret(given), hash);
}
