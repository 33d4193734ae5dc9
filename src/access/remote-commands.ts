import type crypto from 'node:crypto';
import type { Logger } from '../core/logger.ts';
import type { DeviceConfig } from '../device/config.ts';
import type { CommandNonces } from '../store/nonces.ts';
import type { AccessController } from './controller.ts';
import type { KioskService } from './kiosk.ts';
import { type SignedCommand, hasValidSignature, publicKeyFromBase64, signedCommandSchema } from './signed-command.ts';

/** Why a remote command was not carried out. */
export type CommandRefusal =
  | 'disabled'
  | 'retained'
  | 'malformed'
  | 'wrong_device'
  | 'bad_signature'
  | 'stale'
  | 'from_the_future'
  | 'replayed'
  | 'rate_limited'
  | 'failed';

/** The answer published on `command/result`: only for commands that carry a valid signature. */
export interface CommandReply {
  request_id: string | null;
  command: string;
  door: string;
  ok: boolean;
  error?: string;
}

/**
 * The device's rules for remote commands (unlock, open a session on the kiosk). They are off
 * unless the device file turns them on. Then a command must be signed by the admin key of the
 * device file, for this device, issued within the last `max_age_seconds` (and not from further
 * in the future than the clock skew), with a nonce never seen before (remembered in the database
 * for as long as the command could still pass the time check, across restarts), and not a
 * retained message. Unlocks are rate-limited per door. The transport (MQTT) only delivers.
 */
export class RemoteCommands {
  readonly #publicKey: crypto.KeyObject | null;
  readonly #unlocks = new Map<string, number[]>();

  constructor(
    private readonly config: DeviceConfig,
    private readonly deps: { access: AccessController; kiosk: KioskService; nonces: CommandNonces; logger: Logger; now?: () => number },
  ) {
    const rc = config.remote_commands;
    this.#publicKey = rc.enabled && rc.public_key ? publicKeyFromBase64(rc.public_key) : null;
  }

  get enabled(): boolean {
    return this.#publicKey !== null;
  }

  /** Checks and carries out one received command; returns the reply to publish, if any. */
  async receive(payload: Buffer, meta: { retained: boolean }): Promise<{ refused: CommandRefusal | null; reply: CommandReply | null }> {
    const refuse = (refused: CommandRefusal, detail: Record<string, unknown> = {}, reply: CommandReply | null = null) => {
      this.deps.logger.warn({ refused, ...detail }, 'remote command refused');
      return { refused, reply };
    };
    if (!this.#publicKey) return refuse('disabled');
    // a retained command would be obeyed again at every start and reconnect
    if (meta.retained) return refuse('retained');
    let parsed: SignedCommand;
    try {
      const result = signedCommandSchema.safeParse(JSON.parse(payload.toString('utf8')));
      if (!result.success) {
        const issue = result.error.issues[0];
        return refuse('malformed', { problem: `${issue.path.join('.') || 'command'}: ${issue.message}` });
      }
      parsed = result.data;
    } catch {
      return refuse('malformed', { problem: 'not JSON' });
    }
    if (parsed.device !== this.config.device_id) return refuse('wrong_device');
    if (!hasValidSignature(this.#publicKey, parsed)) return refuse('bad_signature');

    // from here the sender holds the admin key: it gets an answer
    const reply = (ok: boolean, error?: string): CommandReply => ({
      request_id: parsed.request_id ?? null,
      command: parsed.command,
      door: parsed.door,
      ok,
      ...(error ? { error } : {}),
    });
    const rc = this.config.remote_commands;
    const now = this.deps.now?.() ?? Date.now();
    const age = now - Date.parse(parsed.issued_at);
    if (age > rc.max_age_seconds * 1000) return refuse('stale', { age_ms: age }, reply(false, 'stale'));
    if (age < -rc.clock_skew_seconds * 1000) return refuse('from_the_future', { age_ms: age }, reply(false, 'from_the_future'));
    const remembered = new Date(Date.parse(parsed.issued_at) + (rc.max_age_seconds + rc.clock_skew_seconds) * 1000 + 1000).toISOString();
    if (!this.deps.nonces.claim(parsed.nonce, remembered)) return refuse('replayed', {}, reply(false, 'replayed'));

    try {
      if (parsed.command === 'unlock') {
        if (!this.#withinRate(parsed.door, now)) return refuse('rate_limited', { door: parsed.door }, reply(false, 'rate_limited'));
        const event = this.deps.access.unlock(parsed.door, 'mqtt');
        return { refused: event ? null : 'failed', reply: reply(event !== null, event ? undefined : 'unknown door') };
      }
      if (!parsed.biometry_url) return refuse('malformed', { problem: 'biometry_url is required' }, reply(false, 'biometry_url is required'));
      await this.deps.kiosk.open(parsed.door, parsed.biometry_url);
      return { refused: null, reply: reply(true) };
    } catch (err) {
      return refuse('failed', { problem: (err as Error).message }, reply(false, (err as Error).message));
    }
  }

  /** At most `unlocks_per_minute` remote openings of one door in any 60 s. */
  #withinRate(door: string, now: number): boolean {
    const recent = (this.#unlocks.get(door) ?? []).filter((t) => now - t < 60_000);
    if (recent.length >= this.config.remote_commands.unlocks_per_minute) {
      this.#unlocks.set(door, recent);
      return false;
    }
    recent.push(now);
    this.#unlocks.set(door, recent);
    return true;
  }
}
