import crypto from 'node:crypto';

/**
 * SHA-256 (hex) of a tenant's live users as sorted `external_user_id:version` lines, with
 * `:group,group` (sorted) added for a person in groups. A device and the hub compute it the same
 * way: their copies (who is enrolled, at which version, in which groups) agree exactly when their
 * digests do.
 */
export function userSetDigest(users: [externalUserId: string, version: number, groups: readonly string[]][]): string {
  const hash = crypto.createHash('sha256');
  for (const [id, version, groups] of [...users].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
    const sorted = [...groups].sort();
    hash.update(sorted.length > 0 ? `${id}:${version}:${sorted.join(',')}\n` : `${id}:${version}\n`);
  }
  return hash.digest('hex');
}
