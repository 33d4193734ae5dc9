import crypto from 'node:crypto';

/**
 * SHA-256 (hex) of a tenant's live users as sorted `external_user_id:version` lines. A device and
 * the hub compute it the same way: their copies agree exactly when their digests do.
 */
export function userSetDigest(users: [externalUserId: string, version: number][]): string {
  const hash = crypto.createHash('sha256');
  for (const [id, version] of [...users].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) hash.update(`${id}:${version}\n`);
  return hash.digest('hex');
}
