import crypto from 'node:crypto';
import fs from 'node:fs';
import mqtt from 'mqtt';
import { type CommandFields, type SignedCommand, generateCommandKeys, readPrivateKey, signCommand } from '../access/signed-command.ts';
import type { DeviceConfig } from '../device/config.ts';
import { OperatorError } from '../errors.ts';
import { brokerOptions, describeMqttError } from '../mqtt/bridge.ts';
import { topicsFor } from '../mqtt/topics.ts';

/**
 * The admin's side of remote commands: a key pair (the private key stays with the admin, the
 * public key goes into the device file), signing a command, and sending it to a device's command
 * topic with the reply it gets.
 */
export function keygen(out: string): { private_key_file: string; public_key: string; device_file: string } {
  if (fs.existsSync(out)) throw new OperatorError(`${out} exists: choose another file (a key is never overwritten)`);
  const { privatePem, publicKey } = generateCommandKeys();
  fs.writeFileSync(out, privatePem, { mode: 0o600, flag: 'wx' });
  return {
    private_key_file: out,
    public_key: publicKey,
    device_file: `remote_commands: { enabled: true, public_key: "${publicKey}" }`,
  };
}

export function sign(keyFile: string, fields: CommandFields): SignedCommand {
  return signCommand(readPrivateKey(keyFile), fields);
}

export interface SendOptions {
  url: string;
  topicPrefix: string;
  username?: string;
  passwordFile?: string;
  caFile?: string;
  timeoutMs?: number;
}

/** Where to send: the flags, else the device file (AUTHFACE_DEVICE_CONFIG) of this machine. */
export function sendOptionsFrom(flags: { url?: string; username?: string; passwordFile?: string; caFile?: string }, device: DeviceConfig | null): SendOptions {
  const url = flags.url ?? device?.mqtt.url ?? (device ? `mqtt://${device.mqtt.embedded.host}:${device.mqtt.embedded.port}` : undefined);
  if (!url) throw new OperatorError('say which broker: --url mqtt://host:port (or set AUTHFACE_DEVICE_CONFIG)');
  return { url, topicPrefix: device?.mqtt.topic_prefix ?? 'authface', username: flags.username, passwordFile: flags.passwordFile, caFile: flags.caFile };
}

/** Publishes a signed command and waits for the device's reply on `command/result`. */
export async function send(command: SignedCommand, options: SendOptions): Promise<unknown> {
  const requestId = command.request_id as string;
  const topics = topicsFor(options.topicPrefix, command.device);
  let client: mqtt.MqttClient;
  try {
    client = await mqtt.connectAsync(options.url, {
      ...brokerOptions({ username: options.username, password_file: options.passwordFile, ca_file: options.caFile, reject_unauthorized: true }),
      clientId: `${options.username ?? 'authface'}-cli-${crypto.randomBytes(4).toString('hex')}`,
      reconnectPeriod: 0,
      connectTimeout: 5000,
    });
  } catch (err) {
    throw new OperatorError(`cannot connect to ${options.url}: ${describeMqttError(err as Error)}`);
  }
  try {
    const reply = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => reject(new OperatorError(`no reply from ${command.device} within ${(options.timeoutMs ?? 5000) / 1000} s: is it online, with remote commands enabled and this key's public key in its device file?`)), options.timeoutMs ?? 5000);
      client.on('message', (_topic, payload) => {
        try {
          const body = JSON.parse(payload.toString()) as { request_id?: string };
          if (body.request_id === requestId) {
            clearTimeout(timer);
            resolve(body);
          }
        } catch {
          // not ours
        }
      });
    });
    await client.subscribeAsync(topics.commandResult, { qos: 1 });
    await client.publishAsync(topics.command, JSON.stringify(command), { qos: 1 });
    return await reply;
  } finally {
    await client.endAsync();
  }
}
