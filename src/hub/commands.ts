import crypto from 'node:crypto';
import { z } from 'zod';
import { commandName, signCommand } from '../access/signed-command.ts';
import { ServiceError } from '../errors.ts';
import type { HubStore } from './store.ts';
import type { HubSync } from './sync-service.ts';

/** How long the hub's API waits for a door to answer a command. */
const COMMAND_WAIT_MS = 5000;

const id = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/);

export const commandRequestSchema = z.strictObject({
  device_id: id,
  door_id: id,
  command: commandName.describe('`unlock` opens the door; `open_session` shows biometry_url on the door\'s kiosk screen'),
  biometry_url: z.url({ protocol: /^https?$/ }).max(2048).optional().describe('open_session: the capture link to show'),
});

export type CommandRequest = z.output<typeof commandRequestSchema>;

export interface CommandOutcome {
  request_id: string;
  /** The door answered (false: no answer within 5 s; it may still carry the command out). */
  answered: boolean;
  ok: boolean | null;
  error: string | null;
}

/**
 * Remote commands issued through the hub's API: signed with the tenant's command key (the key
 * every door of the tenant got when it joined), sent to the door's command topic, and the door's
 * answer returned. Only a device of the caller's tenant can be commanded; a broker client without
 * the key cannot make a command a door accepts.
 */
export function hubCommands(store: HubStore, sync: HubSync): (tenantId: string, request: CommandRequest) => Promise<CommandOutcome> {
  return async (tenantId, request) => {
    if (!(await store.devices.hasJoined(tenantId, request.device_id))) throw new ServiceError('not_found', 'device_not_found', `no device ${request.device_id} has joined this tenant`);
    if (request.command === 'open_session' && !request.biometry_url) throw new ServiceError('invalid_request', 'biometry_url_required', 'open_session needs the biometry_url to show');
    const { privateKey } = await store.keys.commandKey(tenantId);
    const requestId = `req_${crypto.randomUUID()}`;
    const command = signCommand(privateKey, { command: request.command, device: request.device_id, door: request.door_id, request_id: requestId, biometry_url: request.biometry_url });
    const reply = await sync.sendCommand(tenantId, request.device_id, command, COMMAND_WAIT_MS);
    return { request_id: requestId, answered: reply !== null, ok: reply?.ok ?? null, error: reply?.error ?? null };
  };
}
