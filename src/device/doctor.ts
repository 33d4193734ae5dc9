import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import mqtt from 'mqtt';
import { gpioAccessible } from '../access/hardware.ts';
import { IdentifyPolicy } from '../biometrics/identify-policy.ts';
import { MATCHERS, PRIMARY_MODEL, migrationProgress } from '../biometrics/matchers/index.ts';
import { ModelFiles } from '../biometrics/models.ts';
import type { Settings } from '../config/settings.ts';
import { brokerOptions, describeMqttError } from '../mqtt/bridge.ts';
import { runningService } from '../store/backup.ts';
import { DATABASE_FILE } from '../store/database.ts';
import { openStore } from '../store/index.ts';
import { loadKeyring } from '../sync/keyring.ts';
import type { DeviceConfig } from './config.ts';

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

export interface Check {
  name: string;
  status: CheckStatus;
  detail: string;
  /** What to do about it, when it is not ok. */
  fix?: string;
}

const run = (cmd: string, args: string[], timeout = 5000) =>
  new Promise<{ code: number; out: string }>((resolve) =>
    execFile(cmd, args, { timeout }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out: `${stdout}${stderr}` })),
  );

/**
 * `authface doctor`: checks what a door device needs (models, database, camera, GPIO, broker,
 * clock) and says for each what is wrong and how to fix it.
 */
export async function diagnose(settings: Settings, device: DeviceConfig | null): Promise<Check[]> {
  // files first: opening the database tightens modes it finds too loose
  return [
    checkModels(),
    checkFiles(settings),
    checkDatabase(settings),
    checkIdentification(settings, device),
    checkMigration(settings),
    await checkCamera(device),
    checkGpio(device),
    await checkBroker(settings, device),
    checkFleet(settings, device),
    await checkClock(),
  ];
}

/**
 * 1:N at each tenant's gallery size: the threshold identify uses there and the FPIR it gives.
 * Above AUTHFACE_FACE_ONLY_MAX_GALLERY enrolled people, a face-only door is flagged: the threshold
 * that keeps strangers out then turns too many enrolled people away (README, "1:N and strangers").
 */
function checkIdentification(settings: Settings, device: DeviceConfig | null): Check {
  if (!fs.existsSync(path.join(settings.dataDir, DATABASE_FILE))) return { name: '1:N', status: 'skip', detail: 'no database yet' };
  let store;
  try {
    store = openStore(settings.dataDir, settings.AUTHFACE_MASTER_KEY, { mustExist: true });
  } catch {
    return { name: '1:N', status: 'skip', detail: 'the database cannot be opened (see database)' };
  }
  try {
    const match = device?.thresholds.match ?? settings.AUTHFACE_MATCH_THRESHOLD;
    const policy = new IdentifyPolicy({ targetFpir: settings.AUTHFACE_TARGET_FPIR, minThreshold: match, margin: settings.AUTHFACE_IDENTIFY_MARGIN });
    const doorTenant = device ? (device.tenant_id ?? store.tenants.byName('default')?.id) : undefined;
    const faceOnlyDoors = device ? device.doors.filter((d) => d.factor === 'face').map((d) => d.id) : [];
    const percent = (x: number) => `${(x * 100).toPrecision(2)} %`;
    const lines: string[] = [];
    const crowded: string[] = [];
    for (const tenant of store.tenants.list()) {
      const size = store.users.list(tenant.id, 0, 0).total;
      if (size === 0) continue;
      lines.push(`${tenant.name}: ${size} enrolled, identify threshold ${policy.rule(size).threshold.toFixed(4)}, expected FPIR ${percent(policy.expectedFpir(size))}`);
      const facesOnly = device ? tenant.id === doorTenant && faceOnlyDoors.length > 0 : true;
      if (size > settings.AUTHFACE_FACE_ONLY_MAX_GALLERY && facesOnly) crowded.push(`${tenant.name} (${size})`);
    }
    const detail = `${lines.join('; ') || 'nobody enrolled yet'} (target FPIR ${percent(settings.AUTHFACE_TARGET_FPIR)})`;
    if (crowded.length === 0) return { name: '1:N', status: 'ok', detail };
    return {
      name: '1:N',
      status: 'warn',
      detail: `${detail}. Face alone is not enough above ${settings.AUTHFACE_FACE_ONLY_MAX_GALLERY} people: ${crowded.join(', ')}${device ? ` at door(s) ${faceOnlyDoors.join(', ')}` : ''}`,
      fix: 'add a second factor: set `factor: face+pin` on the doors of the device file and give each person a PIN (POST /device/v1/set-pin); see the README, "1:N and strangers"',
    };
  } finally {
    store.close();
  }
}

/**
 * Each tenant's move to the model of new templates: how many people hold its template. The others
 * are still decided by the older model, and get the new template at their next strong capture
 * (README, "Moving to a new model"); once all have it, the older templates can be retired.
 */
function checkMigration(settings: Settings): Check {
  const name = 'model migration';
  if (!fs.existsSync(path.join(settings.dataDir, DATABASE_FILE))) return { name, status: 'skip', detail: 'no database yet' };
  let store;
  try {
    store = openStore(settings.dataDir, settings.AUTHFACE_MASTER_KEY, { mustExist: true });
  } catch {
    return { name, status: 'skip', detail: 'the database cannot be opened (see database)' };
  }
  try {
    const names = new Map(store.tenants.list().map((t) => [t.id, t.name]));
    const lines: string[] = [];
    const retirable: string[] = [];
    for (const c of store.users.modelCoverage()) {
      const tenant = names.get(c.tenantId) ?? c.tenantId;
      lines.push(`${tenant}: ${migrationProgress(c)}`);
      const older = MATCHERS.filter((m) => m.id !== PRIMARY_MODEL && (c.byModel[m.id] ?? 0) > 0);
      if ((c.byModel[PRIMARY_MODEL] ?? 0) === c.people && older.length > 0) retirable.push(tenant);
    }
    const detail = lines.join('; ') || 'nobody enrolled yet';
    if (retirable.length === 0) return { name, status: 'ok', detail };
    return { name, status: 'ok', detail, fix: `every person of ${retirable.join(', ')} holds the new template: \`authface templates retire --tenant <name>\` deletes the older ones` };
  } finally {
    store.close();
  }
}

function checkModels(): Check {
  try {
    const n = new ModelFiles().verifyAll();
    return { name: 'models', status: 'ok', detail: `${n} files match models/manifest.json` };
  } catch (err) {
    return { name: 'models', status: 'fail', detail: (err as Error).message, fix: 'run `npm ci` in the install directory (it copies and checks the models)' };
  }
}

function checkDatabase(settings: Settings): Check {
  if (!fs.existsSync(path.join(settings.dataDir, DATABASE_FILE))) {
    return { name: 'database', status: 'warn', detail: `no database in ${settings.dataDir} yet (the service creates it on its first start)`, fix: 'start the service once, or set AUTHFACE_DATA_DIR to the data directory in use' };
  }
  try {
    const store = openStore(settings.dataDir, settings.AUTHFACE_MASTER_KEY, { mustExist: true });
    try {
      const integrity = store.db.pragma('integrity_check', { simple: true });
      if (integrity !== 'ok') return { name: 'database', status: 'fail', detail: `integrity check: ${String(integrity)}`, fix: 'restore the data directory from a backup: authface restore <file>' };
      const users = (store.db.prepare('SELECT COUNT(*) AS n FROM users WHERE deleted_at IS NULL').get() as { n: number }).n;
      const detail = `${settings.dataDir}: integrity ok, key ok, ${store.tenants.count()} tenant(s), ${users} enrolled user(s)`;
      store.users.activeTemplates(); // opens every template: flags any that is damaged or altered
      const flagged = store.users.needingReenrolment();
      if (flagged.length > 0) {
        const names = flagged.slice(0, 10).map((f) => `${f.externalUserId} (${f.reason})`).join(', ');
        return {
          name: 'database',
          status: 'warn',
          detail: `${detail}; ${flagged.length} user(s) need re-enrolment, their template cannot be used: ${names}${flagged.length > 10 ? ', …' : ''}`,
          fix: 'for each: delete-user, then enrol them again. Several at once after no change of yours means the database was altered: restore a backup (authface restore)',
        };
      }
      return { name: 'database', status: 'ok', detail };
    } finally {
      store.close();
    }
  } catch (err) {
    return { name: 'database', status: 'fail', detail: (err as Error).message, fix: `check that ${settings.dataDir} is the data directory in use and is writable by the service user; restore master.key or the database from a backup if they were lost` };
  }
}

/** The data directory is 0700 and everything in it 0600: templates, keys and ids are the service's alone. */
function checkFiles(settings: Settings): Check {
  const dir = settings.dataDir;
  if (!fs.existsSync(dir)) return { name: 'files', status: 'skip', detail: `${dir} does not exist yet` };
  const loose: string[] = [];
  const mode = (f: string) => fs.statSync(f).mode & 0o777;
  if (mode(dir) & 0o077) loose.push(`${dir} is mode ${mode(dir).toString(8)}`);
  for (const name of fs.readdirSync(dir)) {
    const m = mode(path.join(dir, name));
    if (m & 0o077) loose.push(`${name} is mode ${m.toString(8)}`);
  }
  if (loose.length === 0) return { name: 'files', status: 'ok', detail: `${dir} is 0700, its files 0600` };
  return { name: 'files', status: 'fail', detail: loose.join('; '), fix: `chmod 700 ${dir} && chmod 600 ${dir}/*` };
}

async function checkCamera(device: DeviceConfig | null): Promise<Check> {
  if (!device) return { name: 'camera', status: 'skip', detail: 'no device configuration (AUTHFACE_DEVICE_CONFIG)' };
  const cam = device.camera;
  if (!cam) return { name: 'camera', status: 'skip', detail: 'no camera section: a kiosk-only device (the kiosk uses the browser camera; only `authface turnstile` needs one)' };
  if (cam.driver === 'simulated') {
    const missing = cam.simulated_images.filter((f) => !fs.existsSync(f));
    return missing.length
      ? { name: 'camera', status: 'fail', detail: `simulated images missing: ${missing.join(', ')}`, fix: 'fix camera.simulated_images' }
      : { name: 'camera', status: 'warn', detail: `simulated camera (${cam.simulated_images.length} images)`, fix: 'set camera.driver: fswebcam on a real device' };
  }
  if (!fs.existsSync(cam.device)) {
    return { name: 'camera', status: 'fail', detail: `${cam.device} does not exist`, fix: 'connect the camera, check `ls /dev/video*`, and set camera.device (the udev rule in firmware-config/udev names it /dev/authface-camera)' };
  }
  try {
    fs.accessSync(cam.device, fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return { name: 'camera', status: 'fail', detail: `${cam.device} is not readable by this user`, fix: 'add the service user to the video group: usermod -aG video authface' };
  }
  const fswebcam = await run('fswebcam', ['--version']);
  if (fswebcam.code !== 0 && !/fswebcam/i.test(fswebcam.out)) {
    return { name: 'camera', status: 'fail', detail: 'fswebcam is not installed', fix: 'apt-get install fswebcam' };
  }
  return { name: 'camera', status: 'ok', detail: `${cam.device} present, fswebcam installed` };
}

function checkGpio(device: DeviceConfig | null): Check {
  if (!device) return { name: 'gpio', status: 'skip', detail: 'no device configuration' };
  const accessible = gpioAccessible();
  const wanted = device.doors.flatMap((d) => [d.relay.driver, d.contact?.driver].filter((x): x is 'auto' | 'gpio' | 'simulated' => !!x));
  if (wanted.includes('gpio') && !accessible) {
    return { name: 'gpio', status: 'fail', detail: 'a door asks for GPIO but this machine exposes no GPIO lines to this user', fix: 'enable GPIO (sysfs) and add the user to the gpio group, or set the driver to simulated' };
  }
  if (!accessible && wanted.includes('auto')) {
    return { name: 'gpio', status: 'warn', detail: 'no GPIO here: relays and contacts are simulated (nothing will click)', fix: 'on the door device, check that /sys/class/gpio exists and the user is in the gpio group' };
  }
  return { name: 'gpio', status: 'ok', detail: accessible ? 'GPIO lines accessible' : 'all doors simulated by configuration' };
}

async function checkBroker(settings: Settings, device: DeviceConfig | null): Promise<Check> {
  if (!device) return { name: 'broker', status: 'skip', detail: 'no device configuration' };
  const url = device.mqtt.url;
  if (!url) {
    const { host, port, users_file } = device.mqtt.embedded;
    if (users_file && !fs.existsSync(users_file)) {
      return { name: 'broker', status: 'fail', detail: `mqtt.embedded.users_file ${users_file} does not exist`, fix: `authface broker passwd --file ${users_file} --user admin --role admin` };
    }
    const free = await new Promise<boolean>((resolve) => {
      const probe = net.createServer().once('error', () => resolve(false));
      probe.listen(port, host, () => probe.close(() => resolve(true)));
    });
    if (!free && runningService(settings.dataDir) === null) {
      return { name: 'broker', status: 'fail', detail: `the embedded broker's port ${host}:${port} is taken by another program (another broker?)`, fix: 'stop it, set mqtt.embedded.port to a free port, or set mqtt.url to use that broker' };
    }
    return { name: 'broker', status: 'ok', detail: `embedded broker on ${host}:${port}${free ? ' (started with the service)' : ', run by the service'}${users_file ? '' : '; no users file: only the device itself connects'}` };
  }
  try {
    const client = await mqtt.connectAsync(url, { ...brokerOptions(device.mqtt), connectTimeout: 5000, reconnectPeriod: 0 });
    await client.endAsync();
    const where = url.replace(/\/\/[^@/]*@/, '//');
    if (device.sync && !device.mqtt.username && !new URL(url).username) {
      return {
        name: 'broker',
        status: 'warn',
        detail: `connected to ${where} with no user: on a broker without per-device rights any client reads this tenant's log (sealed templates, user ids, door events) and can delay or drop messages; it can forge none (every sync message is signed by its sender)`,
        fix: 'run the broker with rights the hub manages (firmware-config/mosquitto/dynsec.conf, AUTHFACE_HUB_BROKER_ACL=mosquitto-dynsec) and join again: the door then has a broker client of its own',
      };
    }
    return { name: 'broker', status: 'ok', detail: `connected to ${where}` };
  } catch (err) {
    return { name: 'broker', status: 'fail', detail: `cannot connect to ${url.replace(/\/\/[^@/]*@/, '//')}: ${describeMqttError(err as Error)}`, fix: 'check mqtt.url, the credentials and the CA file; is the broker running and reachable?' };
  }
}

/** A fleet device's tenant key opens with its own key pair (what `authface join` wrote). */
function checkFleet(settings: Settings, device: DeviceConfig | null): Check {
  if (!device?.sync) return { name: 'fleet', status: 'skip', detail: 'not in a fleet (no sync section)' };
  if (!device.tenant_id) return { name: 'fleet', status: 'fail', detail: 'sync without tenant_id', fix: 'authface join --hub https://… --code … writes both' };
  try {
    const versions = loadKeyring(device.sync.tenant_key_file, settings.dataDir, { tenantId: device.tenant_id, deviceId: device.device_id }).versions();
    return { name: 'fleet', status: 'ok', detail: `tenant ${device.tenant_id}: its key (version ${versions.join(', ')}) opens with this device's key pair` };
  } catch (err) {
    return { name: 'fleet', status: 'fail', detail: (err as Error).message, fix: 'join again with a new code: authface hub device add at the hub, then authface join --hub https://… --code … here' };
  }
}

async function checkClock(): Promise<Check> {
  const year = new Date().getUTCFullYear();
  if (year < 2025) return { name: 'clock', status: 'fail', detail: `the clock says ${new Date().toISOString()}`, fix: 'set the time (timedatectl set-ntp true); schedules and audit times depend on it' };
  const sync = await run('timedatectl', ['show', '-p', 'NTPSynchronized', '--value']);
  if (sync.code === 0 && sync.out.trim() === 'yes') return { name: 'clock', status: 'ok', detail: `${new Date().toISOString()}, NTP synchronised` };
  if (sync.code === 0) return { name: 'clock', status: 'warn', detail: 'the clock is not NTP-synchronised', fix: 'timedatectl set-ntp true (a door with a schedule needs the right time)' };
  return { name: 'clock', status: 'warn', detail: `${new Date().toISOString()}; synchronisation unknown (no timedatectl)`, fix: 'make sure an NTP client runs on the device' };
}

export function formatChecks(checks: Check[]): string {
  const mark: Record<CheckStatus, string> = { ok: '✓', warn: '!', fail: '✗', skip: '-' };
  return checks
    .map((c) => `${mark[c.status]} ${c.name.padEnd(9)} ${c.detail}${c.fix && c.status !== 'ok' ? `\n  ${' '.repeat(10)}→ ${c.fix}` : ''}`)
    .join('\n');
}
