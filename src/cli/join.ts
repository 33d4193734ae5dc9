import fs from 'node:fs';
import path from 'node:path';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import type { Settings } from '../config/settings.ts';
import { parseDeviceConfig } from '../device/config.ts';
import { type JoinReply, joinReplySchema } from '../hub/join.ts';
import { isSecureUrl } from '../sessions/origins.ts';
import { loadDeviceKey, loadSigningKey } from '../sync/device-key.ts';
import { unwrapKeys, writeKeyFile, writePrivateFile } from '../sync/keyring.ts';
import { CommandError } from './errors.ts';

const JOIN_TIMEOUT_MS = 15_000;

/**
 * `authface join --hub https://… --code …`: makes this device's key pair here (its private key
 * never leaves the data directory), trades the claim code for the fleet settings, and writes the
 * tenant key file and the device file, so `authface doctor` and `authface serve` find everything.
 * An existing device file keeps its doors, camera and the rest; its fleet settings are replaced.
 */
export async function join(settings: Settings, opts: { hub: string; code: string }): Promise<Record<string, string>> {
  const hub = hubUrl(opts.hub);
  // absolute paths in the device file: the service may start from another directory
  const dataDir = path.resolve(settings.dataDir);
  const { publicKey, privateKeyPem } = loadDeviceKey(dataDir);
  const reply = await requestJoin(hub, opts.code, publicKey, loadSigningKey(dataDir).publicKey);
  // every key version must open here before anything is written
  unwrapKeys(reply.tenant_keys, privateKeyPem, { tenantId: reply.tenant_id, deviceId: reply.device_id });
  const tenantKeyFile = path.join(dataDir, 'tenant-key.json');
  writeKeyFile(tenantKeyFile, reply.tenant_keys);
  // the device's own broker client, when the hub manages the broker's rights
  const passwordFile = path.join(dataDir, 'broker-password');
  if (reply.broker.password) writePrivateFile(passwordFile, reply.broker.password);
  const configFile = path.resolve(settings.AUTHFACE_DEVICE_CONFIG ?? path.join(dataDir, 'device.yaml'));
  const config = joinedConfig(configFile, reply, { hub, tenantKeyFile, passwordFile: reply.broker.password ? passwordFile : undefined });
  parseDeviceConfig(config, configFile);
  writePrivateFile(configFile, stringifyYaml(config));
  return {
    device_id: reply.device_id,
    tenant_id: reply.tenant_id,
    config_file: configFile,
    tenant_key_file: tenantKeyFile,
    broker: reply.broker.url.replace(/\/\/[^@/]*@/, '//'),
    // both variables: without the data directory, doctor and serve would look at the default one
    next: `AUTHFACE_DATA_DIR=${dataDir} AUTHFACE_DEVICE_CONFIG=${configFile} authface doctor, then the same with authface serve`,
  };
}

/** https, or http to this machine only (the code is a credential). */
function hubUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new CommandError(`--hub ${text} is not a URL such as https://hub.example.com`);
  }
  if (!isSecureUrl(url)) {
    throw new CommandError(`--hub ${text}: use https:// (plain http only for a hub on this machine): the code must not travel in the clear`);
  }
  return url.origin;
}

async function requestJoin(hub: string, code: string, publicKey: string, signingKey: string): Promise<JoinReply> {
  let res: Response;
  try {
    res = await fetch(`${hub}/fleet/v1/join`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ code, public_key: publicKey, signing_key: signingKey }),
      signal: AbortSignal.timeout(JOIN_TIMEOUT_MS),
    });
  } catch (err) {
    throw new CommandError(`cannot reach the hub at ${hub}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`);
  }
  const body = (await res.json().catch(() => null)) as { error?: { message?: string } } | null;
  if (!res.ok) throw new CommandError(`the hub refused to join this device: ${body?.error?.message ?? `HTTP ${res.status}`}`);
  const parsed = joinReplySchema.safeParse(body);
  if (!parsed.success) throw new CommandError(`the hub's answer is not one this version understands (${parsed.error.issues[0]?.message}): update authface on this device or the hub`);
  return parsed.data;
}

/** The device file with the fleet's settings: an existing one keeps everything else. */
function joinedConfig(file: string, reply: JoinReply, files: { hub: string; tenantKeyFile: string; passwordFile: string | undefined }): Record<string, unknown> {
  const { tenantKeyFile, passwordFile } = files;
  let current: Record<string, unknown> = {};
  if (fs.existsSync(file)) {
    try {
      current = (parseYaml(fs.readFileSync(file, 'utf8')) as Record<string, unknown> | null) ?? {};
    } catch (err) {
      throw new CommandError(`${file} cannot be read as YAML (${(err as Error).message.split('\n')[0]}): fix or move it, then join again`);
    }
  }
  // a fleet device's groups are the hub's
  const rest = Object.fromEntries(Object.entries(current).filter(([key]) => key !== 'groups'));
  const section = (name: string) => (typeof rest[name] === 'object' && rest[name] !== null ? (rest[name] as Record<string, unknown>) : {});
  return {
    ...rest,
    device_id: reply.device_id,
    tenant_id: reply.tenant_id,
    doors: rest.doors ?? [{ id: 'main' }],
    mqtt: {
      ...section('mqtt'),
      url: reply.broker.url,
      topic_prefix: reply.broker.topic_prefix,
      ...(reply.broker.username && passwordFile ? { username: reply.broker.username, password_file: passwordFile } : {}),
    },
    sync: { tenant_key_file: tenantKeyFile, hub_url: files.hub },
    remote_commands: { ...section('remote_commands'), enabled: true, public_key: reply.command_public_key },
  };
}
