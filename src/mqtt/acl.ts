import type { BrokerRole } from './users-file.ts';

/** Who a client of the embedded broker is: the device itself, or a user of the users file. */
export type BrokerIdentity = 'device' | BrokerRole;

const TOPIC_LEVEL = '[A-Za-z0-9_-]{1,64}';

/**
 * What each identity may do on the embedded broker of one device:
 * - the device publishes its status and its doors' state (retained), access events, alarms and command results, and
 *   reads its command topic;
 * - an admin publishes commands (never retained; the device also checks their signature);
 * - admins and observers read the device's topics (their filters must start with the prefix).
 * Nobody else publishes anything, and only the status and the doors' state may be retained.
 */
export function brokerAcl(prefix: string, deviceId: string) {
  const base = `${prefix}/${deviceId}`;
  const deviceEvent = new RegExp(`^${escape(base)}/door/${TOPIC_LEVEL}/(access|alarm)$`);
  const doorState = new RegExp(`^${escape(base)}/door/${TOPIC_LEVEL}/state$`);
  return {
    mayPublish(who: BrokerIdentity, topic: string, retain: boolean): boolean {
      if (who === 'device') return topic === `${base}/status` || doorState.test(topic) || (!retain && (topic === `${base}/command/result` || deviceEvent.test(topic)));
      if (who === 'admin') return !retain && topic === `${base}/command`;
      return false;
    },
    maySubscribe(who: BrokerIdentity, filter: string): boolean {
      if (who === 'device') return filter === `${base}/command`;
      return filter.split('/')[0] === prefix && filter.split('/').length > 1;
    },
  };
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
