import type { DeviceConfig, DoorConfig } from '../device/config.ts';

export type PolicyDenial = 'not_in_group' | 'outside_schedule';

const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const;

/** Whether a person is in a group: the device file's `groups`, or on a fleet device the hub's (store/groups.ts). */
export type MemberOf = (group: string, externalUserId: string) => boolean;

/** The groups of the device file. */
export function fileGroups(config: Pick<DeviceConfig, 'groups'>): MemberOf {
  return (group, externalUserId) => config.groups[group]?.includes(externalUserId) ?? false;
}

/**
 * Whether an identified user may open a door now: everyone enrolled in the tenant by default,
 * optionally only members of some groups, optionally only inside weekly windows.
 */
export function checkPolicy(memberOf: MemberOf, door: DoorConfig, externalUserId: string, at: Date): PolicyDenial | null {
  const { groups, schedule } = door.allow;
  if (groups && !groups.some((g) => memberOf(g, externalUserId))) return 'not_in_group';
  if (schedule && !schedule.windows.some((w) => inWindow(w, localTime(at, schedule.timezone)))) return 'outside_schedule';
  return null;
}

interface LocalTime {
  day: (typeof DAYS)[number];
  previousDay: (typeof DAYS)[number];
  minutes: number;
}

/** Day of week and minutes since midnight of `at` in an IANA time zone. */
export function localTime(at: Date, timeZone: string): LocalTime {
  const parts = new Intl.DateTimeFormat('en-GB', { timeZone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' }).formatToParts(at);
  const get = (t: string) => parts.find((p) => p.type === t)?.value ?? '';
  const day = get('weekday').toLowerCase().slice(0, 3) as LocalTime['day'];
  const index = DAYS.indexOf(day);
  return { day, previousDay: DAYS[(index + 6) % 7], minutes: Number(get('hour')) * 60 + Number(get('minute')) };
}

function minutes(hhmm: string): number {
  const [h, m] = hhmm.split(':').map(Number);
  return h * 60 + m;
}

/** A window opens on its days at `from` and closes at `to`, which may be after midnight. */
function inWindow(w: { days: readonly string[]; from: string; to: string }, t: LocalTime): boolean {
  const from = minutes(w.from);
  const to = minutes(w.to);
  if (from < to) return w.days.includes(t.day) && t.minutes >= from && t.minutes < to;
  // overnight: the evening part belongs to today, the morning part to the window of the day before
  return (w.days.includes(t.day) && t.minutes >= from) || (w.days.includes(t.previousDay) && t.minutes < to);
}
