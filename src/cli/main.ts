import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { Command, InvalidArgumentError, Option } from 'commander';
import { type Settings, loadSettings, settingsTable } from '../config/settings.ts';
import { type DeviceConfig, type DoorConfig, deviceConfigReference, doorLiveness, loadDeviceConfig } from '../device/config.ts';
import { VERSION } from '../version.ts';
import { OperatorError } from '../errors.ts';
import { parseAllowedOrigin } from '../sessions/origins.ts';
import { backupDatabase, restoreDatabase } from '../store/backup.ts';
import { type Store, openStore } from '../store/index.ts';
import type { LivenessMode } from '../store/tenants.ts';
import { type BrokerRole, hashPassword, setUser } from '../mqtt/users-file.ts';
import { adminProblem } from '../console/admins.ts';
import { CommandError } from './errors.ts';
import { stopOnSignals } from './stop-signals.ts';
import { createTenant, findTenant, listKeys, showTenant, updateTenant } from './tenants.ts';
import { retireTemplates, templateStatus } from './templates.ts';

const program = new Command()
  .name('authface')
  .description('Auth Face: self-hosted face authentication service')
  .version(VERSION)
  .showHelpAfterError();

const print = (value: unknown) => console.log(JSON.stringify(value, null, 2));

// the face engine, HTTP, MQTT and PostgreSQL load only for the commands that use them: `authface
// tenant list` answers in a fraction of a second (found: 4-6 s for every command)
const hubCommands = () => import('./hub.ts');
const remoteCommands = () => import('./remote.ts');

/**
 * Runs a command against the database of the data directory the service uses (said on stderr).
 * Only `tenant create`, the first thing an installer runs, may create a database.
 */
function withStore(run: (store: Store) => unknown, opts: { create?: boolean } = {}): void {
  const settings = loadSettings();
  process.stderr.write(`authface: data directory ${settings.dataDir}\n`);
  const store = openStore(settings.dataDir, settings.AUTHFACE_MASTER_KEY, { mustExist: !opts.create });
  try {
    print(run(store));
  } finally {
    store.close();
  }
}

/**
 * The tenant a fresh service creates so the README's curl walk-through and a first local app work
 * at once: passive liveness (curl cannot turn a head; tenants made with `tenant create` are
 * active), and redirects to this machine on any port.
 */
const DEFAULT_TENANT = {
  name: 'default',
  allowedOrigins: ['http://localhost:*', 'http://127.0.0.1:*', 'http://[::1]:*'],
  livenessMode: 'passive' as LivenessMode,
};

const FIRST_KEY_FILE = 'first-start-api-key';

/**
 * First start on an empty data directory: the default tenant and its key. The key is shown on a
 * terminal only; under systemd or docker, whose logs keep stdout, it goes to a 0600 file instead.
 */
function bootstrap(settings: Settings): void {
  const store = openStore(settings.dataDir, settings.AUTHFACE_MASTER_KEY);
  try {
    if (store.tenants.count() > 0) return;
    const tenant = store.tenants.create(DEFAULT_TENANT);
    const { apiKey } = store.tenants.createKey(tenant.id);
    const about =
      `First start: created tenant "${tenant.name}" (${tenant.id}), redirects allowed to ${DEFAULT_TENANT.allowedOrigins.join(', ')},\n` +
      `passive liveness for trying the API; create production tenants with \`authface tenant create\` (active liveness).\n`;
    if (process.stdout.isTTY) {
      process.stdout.write(`\n${about}API key (shown once, store it now): ${apiKey}\n\n`);
    } else {
      const file = path.join(settings.dataDir, FIRST_KEY_FILE);
      fs.writeFileSync(file, `# API key of tenant "${tenant.name}" (${tenant.id}): store it elsewhere, then delete this file\n${apiKey}\n`, { mode: 0o600 });
      process.stdout.write(`\n${about}Its API key is in ${file} (mode 600, not printed here because this output may be kept in logs): store it elsewhere, then delete the file.\n\n`);
    }
  } finally {
    store.close();
  }
}

/** Starts the service (with its device side when configured) and stops it cleanly on a signal. */
async function serveUntilSignal(settings: Settings, device: DeviceConfig | null, onStop: () => void = () => undefined) {
  // a fleet door serves its hub tenant only: no local "default" tenant or first-start key beside it
  if (!device?.sync) bootstrap(settings);
  const { startService } = await import('../service.ts');
  const service = await startService(settings, { device });
  stopOnSignals(async () => {
    onStop();
    await service.close();
    process.exit(0);
  });
  return service;
}

program
  .command('serve')
  .description('run the HTTP API and capture service (what `npm start` runs); with AUTHFACE_DEVICE_CONFIG also the doors, kiosk and MQTT')
  .action(async () => {
    const settings = loadSettings();
    const device = settings.AUTHFACE_DEVICE_CONFIG ? loadDeviceConfig(settings.AUTHFACE_DEVICE_CONFIG) : null;
    await serveUntilSignal(settings, device);
  });

program
  .command('turnstile')
  .description('headless turnstile: the service plus a camera loop that identifies and opens (needs AUTHFACE_DEVICE_CONFIG)')
  .action(async () => {
    const settings = loadSettings();
    if (!settings.AUTHFACE_DEVICE_CONFIG) throw new CommandError('turnstile mode needs a device configuration: set AUTHFACE_DEVICE_CONFIG');
    const config = loadDeviceConfig(settings.AUTHFACE_DEVICE_CONFIG);
    const door = config.doors.find((d) => d.id === (config.turnstile.door ?? config.doors[0].id)) as DoorConfig;
    if (doorLiveness(config, door) !== 'passive') {
      throw new CommandError(`door ${door.id} uses active liveness, which needs a screen; a headless turnstile door needs "liveness: passive"`);
    }
    if (door.factor !== 'face') {
      throw new CommandError(`door ${door.id} asks for a PIN (factor: ${door.factor}), which needs a screen; a headless turnstile door needs "factor: face"`);
    }
    if (!config.camera) throw new CommandError('turnstile mode needs the camera section in the device file (firmware-config/README.md)');
    const camera = config.camera;
    const [{ Turnstile, cameraFor }, { createLogger }] = await Promise.all([import('../access/turnstile.ts'), import('../core/logger.ts')]);
    const running: { turnstile?: InstanceType<typeof Turnstile> } = {};
    const service = await serveUntilSignal(settings, config, () => running.turnstile?.stop());
    await service.analyzer.ready();
    running.turnstile = new Turnstile(door.id, {
      camera: cameraFor(camera),
      intervalMs: camera.interval_ms,
      analyzer: service.analyzer,
      kiosk: service.device!.kiosk,
      capture: service.capture,
      config,
      logger: createLogger(settings.LOG_LEVEL),
    });
    await running.turnstile.run();
  });

const collect = (value: string, previous: string[] | undefined) => {
  try {
    return [...(previous ?? []), parseAllowedOrigin(value)];
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
};
const liveness = () => new Option('--liveness <mode>', 'liveness checks of capture sessions').choices(['passive', 'active']);
/** `--pad-threshold`: a number 0..1, or (to update) `default` for none of the tenant's own. */
const padThreshold = (clearable: boolean) =>
  new Option(
    '--pad-threshold <floor>',
    `the anti-spoofing network's floor for the tenant's sessions, 0..1 (default: the device's or AUTHFACE_PAD_THRESHOLD; a door's pad_threshold comes first)${clearable ? "; 'default' takes the tenant's own away" : ''}`,
  ).argParser((value: string): number | 'default' => {
    if (clearable && value === 'default') return value;
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new InvalidArgumentError(`a number from 0 to 1${clearable ? ", or 'default'" : ''}`);
    return n;
  });
/** The floor an update gives: a number, null to take the tenant's own away, undefined to keep it. */
const padChange = (value: number | 'default' | undefined): number | null | undefined => (value === 'default' ? null : value);

const tenant = program.command('tenant').description('manage tenants');
tenant
  .command('create')
  .description('create a tenant and its first API key; prints {tenant_id, api_key} (the key only this once)')
  .requiredOption('--name <name>', 'display name')
  .option('--allowed-origin <origin>', 'origin redirect_url may point to: https://host[:port], or http://localhost[:port|:*] (repeatable, at least one)', collect, [])
  .addOption(liveness().default('active'))
  .addOption(padThreshold(false))
  .action((opts: { name: string; allowedOrigin: string[]; liveness: LivenessMode; padThreshold?: number }) =>
    withStore((store) => createTenant(store, { name: opts.name, allowedOrigins: opts.allowedOrigin, liveness: opts.liveness, padThreshold: opts.padThreshold }), { create: true }),
  );
tenant
  .command('list')
  .description('every tenant with its origins, liveness mode, number of users and keys')
  .action(() => withStore((store) => store.tenants.list().map((t) => showTenant(store, t))));
tenant
  .command('show')
  .description('one tenant')
  .requiredOption('--tenant <id or name>', 'tenant id (or name)')
  .action((opts: { tenant: string }) => withStore((store) => showTenant(store, findTenant(store, opts.tenant))));
tenant
  .command('update')
  .description("change a tenant's name, allowed origins (the list given replaces the old one), liveness mode or anti-spoofing floor")
  .requiredOption('--tenant <id or name>', 'tenant id (or name)')
  .option('--name <name>', 'new display name')
  .option('--allowed-origin <origin>', 'the new list of allowed origins (repeatable)', collect, undefined)
  .addOption(liveness())
  .addOption(padThreshold(true))
  .action((opts: { tenant: string; name?: string; allowedOrigin?: string[]; liveness?: LivenessMode; padThreshold?: number | 'default' }) =>
    withStore((store) => updateTenant(store, opts.tenant, { name: opts.name, allowedOrigins: opts.allowedOrigin, liveness: opts.liveness, padThreshold: padChange(opts.padThreshold) })),
  );

program
  .command('admin')
  .description("admins of this device's console (/console)")
  .command('add')
  .description("add an admin of this device's console, or set the password of one (its open sessions end); only a scrypt hash is stored")
  .requiredOption('--name <name>', 'the name to sign in with')
  .option('--password-file <file>', 'read the password from this file (default: the first line on standard input)')
  .action(async (opts: { name: string; passwordFile?: string }) => {
    const password = opts.passwordFile ? fs.readFileSync(opts.passwordFile, 'utf8').trim() : (await firstLine(process.stdin)).trim();
    const problem = adminProblem(opts.name, password);
    if (problem) throw new CommandError(problem);
    const { setDeviceAdmin } = await import('../console/device-source.ts');
    withStore((store) => ({ admin: opts.name, status: setDeviceAdmin(store, opts.name, hashPassword(password)) }), { create: true });
  });
const key = program.command('key').description('manage API keys');
key
  .command('create')
  .description('create another API key for a tenant (rotate: create, deploy, revoke the old one)')
  .requiredOption('--tenant <id or name>', 'tenant id (or name)')
  .action((opts: { tenant: string }) =>
    withStore((store) => {
      const t = findTenant(store, opts.tenant);
      const { keyId, apiKey } = store.tenants.createKey(t.id);
      return { tenant_id: t.id, key_id: keyId, api_key: apiKey };
    }),
  );
key
  .command('list')
  .description("a tenant's keys: ids and dates (a key itself is shown only when it is created)")
  .requiredOption('--tenant <id or name>', 'tenant id (or name)')
  .action((opts: { tenant: string }) => withStore((store) => listKeys(store, findTenant(store, opts.tenant).id)));
key
  .command('revoke')
  .description('revoke an API key by its id')
  .requiredOption('--key-id <key_id>', 'key id printed when the key was created (authface key list)')
  .action((opts: { keyId: string }) =>
    withStore((store) => {
      if (!store.tenants.revokeKey(opts.keyId)) throw new CommandError(`no active key ${opts.keyId}`);
      return { key_id: opts.keyId, revoked: true };
    }),
  );

const templates = program.command('templates').description('templates of each face model (README, "Moving to a new model")');
templates
  .command('status')
  .description('per tenant: its people, and how many hold a template of each model')
  .action(() => withStore((store) => templateStatus(store)));
templates
  .command('retire')
  .description("delete a tenant's templates of an older model, of every person who holds the new model's (people who do not keep theirs)")
  .requiredOption('--tenant <id or name>', 'tenant id (or name)')
  .option('--model <id>', 'the model whose templates go (default: every older model)')
  .action((opts: { tenant: string; model?: string }) => withStore((store) => retireTemplates(store, findTenant(store, opts.tenant), opts.model)));

const positive = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer');
  return n;
};

const evaluate = program.command('eval').description('measure accuracy on labelled images (prints JSON figures)');
evaluate
  .command('pairs')
  .description('1:1 verification figures on a CSV of labelled pairs (file_x,file_y,Decision[,fold])')
  .requiredOption('--csv <file>', 'the pairs CSV')
  .requiredOption('--images <dir>', 'directory the CSV paths are relative to (else matched by file name)')
  .option('--workers <n>', 'worker threads', positive)
  .option('--progress', 'show progress on stderr', false)
  .option('--model <id>', 'the model to measure, or all', 'all')
  .action(async (opts: { csv: string; images: string; workers?: number; progress: boolean; model: string }) => {
    const settings = loadSettings();
    const { evalPairsCommand } = await import('./eval.ts');
    await evalPairsCommand(settings, { ...opts, workers: opts.workers ?? settings.AUTHFACE_WORKERS });
  });
evaluate
  .command('identify')
  .description('1:N figures (FNIR, FPIR): enrol the first image of each person folder, identify the others and every stranger')
  .requiredOption('--gallery <dir>', 'directory with one sub-folder per person')
  .option('--strangers <dir>', 'images of people who are not enrolled (flat, or one sub-folder each): the non-mated searches that measure FPIR')
  .option('--exclude <name...>', 'sub-folders that are not people (e.g. group)', [])
  .option('--workers <n>', 'worker threads', positive)
  .option('--model <id>', 'the model to measure, or all', 'all')
  .action(async (opts: { gallery: string; strangers?: string; exclude: string[]; workers?: number; model: string }) => {
    const settings = loadSettings();
    const { evalIdentifyCommand } = await import('./eval.ts');
    await evalIdentifyCommand(settings, { ...opts, workers: opts.workers ?? settings.AUTHFACE_WORKERS });
  });

const hub = program.command('hub').description('the fleet hub: PostgreSQL and the broker shared with the devices (README, "A fleet")');
const databaseUrl = () => new Option('--database-url <url>', 'the hub database (default AUTHFACE_HUB_DATABASE_URL)');
hub
  .command('serve')
  .description('sequence the changes devices send, publish them, serve what a device missed; serve /biometry/v1 and the capture page on the central store (HOST, PORT, PUBLIC_URL)')
  .addOption(databaseUrl())
  .option('--broker-url <url>', 'the broker the devices use (default AUTHFACE_HUB_BROKER_URL)')
  .option('--prefix <level>', 'first topic level, as the devices\' mqtt.topic_prefix', 'authface')
  .action(async (opts: { databaseUrl?: string; brokerUrl?: string; prefix: string }) => (await hubCommands()).hubServe(loadSettings(), opts));
const hubTenant = hub.command('tenant').description("the fleet's tenants");
hubTenant
  .command('add')
  .description("add a tenant, make its key and an API key for the hub's /biometry/v1; prints {tenant_id (the devices' tenant_id), api_key (only this once)}")
  .requiredOption('--name <name>', 'display name')
  .option('--id <uuid>', 'the tenant id (default: a new one)')
  .option('--allowed-origin <origin>', "origin redirect_url of the hub's sessions may point to (repeatable)", collect, [])
  .addOption(liveness().default('active'))
  .addOption(padThreshold(false))
  .addOption(databaseUrl())
  .action(async (opts: { name: string; id?: string; databaseUrl?: string; allowedOrigin: string[]; liveness: LivenessMode; padThreshold?: number }) =>
    print(await (await hubCommands()).hubTenantAdd(loadSettings(), { ...opts, allowedOrigins: opts.allowedOrigin })),
  );
hubTenant
  .command('update')
  .description("change a tenant's name, allowed origins (the list given replaces the old one), liveness mode or anti-spoofing floor: a change of its log, which every door applies")
  .requiredOption('--tenant <id>', 'tenant id')
  .option('--name <name>', 'new display name')
  .option('--allowed-origin <origin>', 'the new list of allowed origins (repeatable)', collect, undefined)
  .addOption(liveness())
  .addOption(padThreshold(true))
  .addOption(databaseUrl())
  .action(async (opts: { tenant: string; name?: string; allowedOrigin?: string[]; liveness?: LivenessMode; padThreshold?: number | 'default'; databaseUrl?: string }) =>
    print(await (await hubCommands()).hubTenantUpdate(loadSettings(), { ...opts, allowedOrigins: opts.allowedOrigin, padThreshold: padChange(opts.padThreshold) })),
  );
const hubGroup = hub.command('group').description("the groups a tenant's people are in (a door's allow.groups): changes of the log, which every door applies");
for (const [name, member] of [['add', true], ['remove', false]] as const) {
  hubGroup
    .command(name)
    .description(member ? 'put an enrolled person in a group' : 'take a person out of a group')
    .requiredOption('--tenant <id>', 'tenant id')
    .requiredOption('--group <name>', 'group name, as in a door\'s allow.groups')
    .requiredOption('--user <external_user_id>', 'the person')
    .addOption(databaseUrl())
    .action(async (opts: { tenant: string; group: string; user: string; databaseUrl?: string }) => print(await (await hubCommands()).hubGroupChange(loadSettings(), { ...opts, member })));
}
hubGroup
  .command('list')
  .description('every person of the tenant who is in a group, with their groups')
  .requiredOption('--tenant <id>', 'tenant id')
  .addOption(databaseUrl())
  .action(async (opts: { tenant: string; databaseUrl?: string }) => print(await (await hubCommands()).hubGroupList(loadSettings(), opts)));
const hubPin = hub.command('pin').description("people's PINs for face+pin doors: changes of the log, which every door applies (never the PIN: its scrypt verifier, sealed under the tenant key)");
hubPin
  .command('set')
  .description("set an enrolled person's PIN (4 to 8 digits, read from the first line on standard input)")
  .requiredOption('--tenant <id>', 'tenant id')
  .requiredOption('--user <external_user_id>', 'the person')
  .addOption(databaseUrl())
  .action(async (opts: { tenant: string; user: string; databaseUrl?: string }) => {
    const pin = (await firstLine(process.stdin)).trim();
    print(await (await hubCommands()).hubPinChange(loadSettings(), { ...opts, pin }));
  });
hubPin
  .command('remove')
  .description("remove a person's PIN")
  .requiredOption('--tenant <id>', 'tenant id')
  .requiredOption('--user <external_user_id>', 'the person')
  .addOption(databaseUrl())
  .action(async (opts: { tenant: string; user: string; databaseUrl?: string }) => print(await (await hubCommands()).hubPinChange(loadSettings(), { ...opts, pin: null })));
hub
  .command('admin')
  .description('admins of the console (/console at the hub)')
  .command('add')
  .description('add an admin of the console, or set the password of one (its open sessions end); only a scrypt hash is stored')
  .requiredOption('--name <name>', 'the name to sign in with')
  .option('--password-file <file>', 'read the password from this file (default: the first line on standard input)')
  .addOption(databaseUrl())
  .action(async (opts: { name: string; passwordFile?: string; databaseUrl?: string }) => {
    const password = opts.passwordFile ? fs.readFileSync(opts.passwordFile, 'utf8').trim() : (await firstLine(process.stdin)).trim();
    print(await (await hubCommands()).hubAdminAdd(loadSettings(), { ...opts, password }));
  });
const hubDevice = hub.command('device').description("the fleet's devices");
hubDevice
  .command('revoke')
  .description("revoke a lost or stolen device: its broker client is removed, the tenant key rotates for the others, and it erases its templates if it comes back")
  .requiredOption('--tenant <id>', 'tenant id')
  .requiredOption('--name <device_id>', "the device's id")
  .addOption(databaseUrl())
  .option('--broker-url <url>', 'the broker, with the hub\'s credentials (or AUTHFACE_HUB_BROKER_URL)')
  .option('--prefix <level>', 'first topic level, as the devices\' mqtt.topic_prefix', 'authface')
  .action(async (opts: { tenant: string; name: string; databaseUrl?: string; brokerUrl?: string; prefix: string }) => print(await (await hubCommands()).hubDeviceRevoke(loadSettings(), opts)));
hubDevice
  .command('add')
  .description('print a short-lived, single-use code with which one device joins the tenant (`authface join` on the device)')
  .requiredOption('--tenant <id>', 'tenant id')
  .requiredOption('--name <device_id>', "the device's id (an MQTT topic level)")
  .addOption(new Option('--ttl-minutes <n>', 'how long the code is valid').argParser((v) => {
      const n = positive(v);
      if (n > 24 * 60) throw new InvalidArgumentError('at most a day (1440)');
      return n;
    }).default(15))
  .addOption(databaseUrl())
  .action(async (opts: { tenant: string; name: string; ttlMinutes: number; databaseUrl?: string }) => print(await (await hubCommands()).hubDeviceAdd(loadSettings(), opts)));
program
  .command('join')
  .description("join a fleet with the code `authface hub device add` printed: makes this device's key pair, writes its tenant key and device file")
  .requiredOption('--hub <url>', "the hub's address (https://…; http only for a hub on this machine)")
  .requiredOption('--code <code>', 'the claim code')
  .action(async (opts: { hub: string; code: string }) => print(await (await import('./join.ts')).join(loadSettings(), opts)));
hub
  .command('wrap-key')
  .description("register a device set up by hand and print the tenant key wrapped to its public key: save it as that device's sync.tenant_key_file")
  .requiredOption('--tenant <id>', 'tenant id')
  .requiredOption('--device <id>', 'device_id of the device')
  .requiredOption('--public-key <key>', 'device_public_key, as `authface sync key` printed it on the device')
  .option('--signing-key <key>', 'device_signing_key, as `authface sync key` printed it (a device of an earlier release has none)')
  .addOption(databaseUrl())
  .action(async (opts: { tenant: string; device: string; publicKey: string; signingKey?: string; databaseUrl?: string }) => print(await (await hubCommands()).hubWrapKey(loadSettings(), opts)));
hub
  .command('key')
  .description("print the hub's key of a tenant, which signs everything the hub sends: a device set up by hand sets it as remote_commands.public_key")
  .requiredOption('--tenant <id>', 'tenant id')
  .addOption(databaseUrl())
  .action(async (opts: { tenant: string; databaseUrl?: string }) => print(await (await hubCommands()).hubKey(loadSettings(), opts)));
hub
  .command('doctor')
  .description("check the hub's database: the host it writes to, and whether an acknowledged change survives a failover (synchronous replication)")
  .addOption(databaseUrl())
  .action(async (opts: { databaseUrl?: string }) => {
    const { formatChecks } = await import('../device/doctor.ts');
    const checks = await (await hubCommands()).hubDoctor(loadSettings(), opts);
    console.log(formatChecks(checks));
    if (checks.some((c) => c.status === 'fail')) process.exitCode = 1;
  });
hub
  .command('status')
  .description("a tenant's log, its devices (online, lag, diverged) and the conflicts waiting for an admin")
  .requiredOption('--tenant <id>', 'tenant id')
  .addOption(databaseUrl())
  .action(async (opts: { tenant: string; databaseUrl?: string }) => print(await (await hubCommands()).hubStatus(loadSettings(), opts)));
hub
  .command('conflict')
  .description("the conflicts waiting for an admin (listed by `hub status`)")
  .command('resolve')
  .description("end a conflict: keep the hub's version, take the door's change, or delete the person; a change of the log every door applies, audited")
  .requiredOption('--tenant <id>', 'tenant id')
  .requiredOption('--change-id <id>', "the conflict's change_id (hub status)")
  .addOption(new Option('--resolution <how>', 'what to do').choices(['keep_hub', 'take_door', 'delete']).makeOptionMandatory())
  .addOption(databaseUrl())
  .action(async (opts: { tenant: string; changeId: string; resolution: 'keep_hub' | 'take_door' | 'delete'; databaseUrl?: string }) => print(await (await hubCommands()).hubConflictResolve(loadSettings(), opts)));
program
  .command('sync')
  .description('fleet sync on a device')
  .command('key')
  .description("print this device's public keys (its key pairs are made in the data directory on first use) for `authface hub wrap-key`")
  .action(async () => print((await hubCommands()).syncKey(loadSettings())));

program
  .command('doctor')
  .description('check models, database, camera, GPIO, broker and clock; say what is wrong and how to fix it')
  .action(async () => {
    const settings = loadSettings();
    const device = settings.AUTHFACE_DEVICE_CONFIG ? loadDeviceConfig(settings.AUTHFACE_DEVICE_CONFIG) : null;
    const { diagnose, formatChecks } = await import('../device/doctor.ts');
    const checks = await diagnose(settings, device);
    console.log(formatChecks(checks));
    if (checks.some((c) => c.status === 'fail')) process.exitCode = 1;
  });

const command = program.command('command').description('remote commands: an admin key pair, and commands signed with it');
command
  .command('keygen')
  .description('make an Ed25519 key pair: the private key file stays with you (mode 600), the public key goes into the device file')
  .requiredOption('--out <file>', 'where to write the private key (never overwritten)')
  .action(async (opts: { out: string }) => print((await remoteCommands()).keygen(opts.out)));
command
  .command('sign')
  .description('print a signed command (JSON) to publish on <prefix>/<device>/command within its validity (remote_commands.max_age_seconds)')
  .requiredOption('--key <file>', 'the private key from `command keygen`')
  .requiredOption('--device <id>', 'device_id of the device')
  .requiredOption('--door <id>', 'door id')
  .addOption(new Option('--command <name>', 'what to do').choices(['unlock', 'open_session']).default('unlock'))
  .option('--biometry-url <url>', 'open_session: the capture link to show on the door screen')
  .option('--request-id <id>', 'echoed in the reply on command/result')
  .action(async (opts: { key: string; device: string; door: string; command: 'unlock' | 'open_session'; biometryUrl?: string; requestId?: string }) =>
    print((await remoteCommands()).sign(opts.key, { command: opts.command, device: opts.device, door: opts.door, biometry_url: opts.biometryUrl, request_id: opts.requestId })),
  );

program
  .command('unlock')
  .description("open a door remotely: sign an unlock with your key, send it to the device's command topic and print its reply")
  .requiredOption('--door <id>', 'door id')
  .requiredOption('--key <file>', 'the private key from `command keygen`')
  .option('--device <id>', 'device_id (default: the device file of this machine)')
  .option('--url <url>', 'broker (default: the device file of this machine)')
  .option('--username <name>', 'broker user (an admin)')
  .option('--password-file <file>', "file holding that user's password")
  .option('--ca-file <file>', 'CA certificate of an mqtts:// broker')
  .action(async (opts: { door: string; key: string; device?: string; url?: string; username?: string; passwordFile?: string; caFile?: string }) => {
    const settings = loadSettings();
    const device = settings.AUTHFACE_DEVICE_CONFIG ? loadDeviceConfig(settings.AUTHFACE_DEVICE_CONFIG) : null;
    const deviceId = opts.device ?? device?.device_id;
    if (!deviceId) throw new CommandError('say which device: --device <device_id> (or set AUTHFACE_DEVICE_CONFIG)');
    const { send, sendOptionsFrom, sign } = await remoteCommands();
    const signed = sign(opts.key, { command: 'unlock', device: deviceId, door: opts.door, request_id: crypto.randomUUID() });
    const reply = (await send(signed, sendOptionsFrom(opts, device))) as { ok: boolean };
    print(reply);
    if (!reply.ok) process.exitCode = 1;
  });

const broker = program.command('broker').description("the embedded broker's users");
broker
  .command('passwd')
  .description('add a user to the users file (mqtt.embedded.users_file), or change its password; only a scrypt hash is stored')
  .requiredOption('--file <file>', 'the users file (created 0600)')
  .requiredOption('--user <name>', 'user name (its MQTT client ids must be the name or start with "<name>-")')
  .addOption(new Option('--role <role>', 'admin: may send (signed) commands; observer: reads events').choices(['admin', 'observer']).makeOptionMandatory())
  .option('--password-file <file>', 'read the password from this file (default: the first line on standard input)')
  .action(async (opts: { file: string; user: string; role: BrokerRole; passwordFile?: string }) => {
    const password = opts.passwordFile ? fs.readFileSync(opts.passwordFile, 'utf8').trim() : (await firstLine(process.stdin)).trim();
    setUser(opts.file, { name: opts.user, role: opts.role, password });
    print({ file: opts.file, user: opts.user, role: opts.role });
  });

async function firstLine(stream: NodeJS.ReadableStream): Promise<string> {
  if ((stream as NodeJS.ReadStream).isTTY) process.stderr.write('password: ');
  for await (const line of readline.createInterface({ input: stream })) return line;
  return '';
}

program
  .command('backup')
  .description('copy the database while the service runs (consistent, online); the key is not in it: keep master.key safe separately')
  .requiredOption('--out <file>', 'where to write the backup (mode 600)')
  .action(async (opts: { out: string }) => {
    const settings = loadSettings();
    process.stderr.write(`authface: data directory ${settings.dataDir}\n`);
    print({ data_dir: settings.dataDir, ...(await backupDatabase(settings.dataDir, settings.AUTHFACE_MASTER_KEY, opts.out)) });
  });

program
  .command('restore')
  .description('replace the database with a backup, after checking it opens with the key (the service must be stopped)')
  .argument('<file>', 'a file written by `authface backup`')
  .option('--key-file <file>', 'the master.key in use when the backup was made (default: AUTHFACE_MASTER_KEY, else the data directory\'s master.key)')
  .action((file: string, opts: { keyFile?: string }) => {
    const settings = loadSettings();
    process.stderr.write(`authface: data directory ${settings.dataDir}\n`);
    print({ data_dir: settings.dataDir, ...restoreDatabase(settings.dataDir, file, { env: settings.AUTHFACE_MASTER_KEY, keyFile: opts.keyFile }) });
  });

program
  .command('config')
  .description('check the environment and print every configuration variable with its default and meaning')
  .option('--device', 'print the options of the device configuration file instead')
  .action((opts: { device?: boolean }) => {
    loadSettings();
    console.log(opts.device ? deviceConfigReference() : settingsTable());
  });

/**
 * What the operator sees when a command cannot run: one line saying what is wrong and how to fix
 * it. Only a failure nobody foresaw still prints its stack (that one is a bug to report).
 */
function operatorMessage(err: unknown): string | null {
  if (err instanceof OperatorError) return err.message;
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number; hostname?: string };
  if (e?.code === 'EADDRINUSE') return `port ${e.port} on ${e.address} is in use by another program: stop it, or set PORT to a free port`;
  const anAddress = 'set HOST to 0.0.0.0 (every interface), 127.0.0.1 (this machine only) or one of its addresses (`ip -brief address`)';
  if ((e?.code === 'ENOTFOUND' || e?.code === 'EAI_AGAIN') && e.syscall === 'getaddrinfo') return `HOST=${e.hostname} is neither an address nor a name this machine can resolve: ${anAddress}`;
  if (e?.code === 'EADDRNOTAVAIL') return `HOST=${e.address} is not an address of this machine: ${anAddress}`;
  if ((e?.code === 'EEXIST' || e?.code === 'ENOTDIR') && e.syscall === 'mkdir') return `${e.path} cannot be made a directory: a file is in the way. Point AUTHFACE_DATA_DIR at a directory (it is made when missing)`;
  if (e?.code === 'EACCES' && e.syscall === 'listen') return `no permission to listen on port ${e.port}: use a port above 1023, or set PORT`;
  if (e?.code === 'EACCES' || e?.code === 'EPERM') return `${e.path ?? 'a file'} cannot be accessed by this user (${e.code}): check its owner and mode`;
  return null;
}

try {
  await program.parseAsync(process.argv);
} catch (err) {
  const message = operatorMessage(err);
  if (!message) throw err;
  console.error(`authface: ${message}`);
  process.exit(2);
}
