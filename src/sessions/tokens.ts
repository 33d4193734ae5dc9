import crypto from 'node:crypto';
import { hashSecret } from '../core/secrets.ts';

/** A capture token: 32 random bytes in the link, only their SHA-256 in the database. */
export function newCaptureToken(): { token: string; hash: Buffer } {
  const token = crypto.randomBytes(32).toString('base64url');
  return { token, hash: hashSecret(token) };
}

export function captureTokenHash(token: string): Buffer | undefined {
  // 32 bytes in base64url are 43 characters; anything else cannot be one of ours
  return /^[A-Za-z0-9_-]{43}$/.test(token) ? hashSecret(token) : undefined;
}
