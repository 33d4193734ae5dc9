import crypto from 'node:crypto';
import type { IClientOptions } from 'mqtt';

/**
 * MQTT options of the hub's and the devices' sync clients: MQTT 5, a random client id under a
 * readable prefix (a predictable id would let another client throw this one off), a clean
 * session (nothing relies on the broker keeping messages: the log is fetched by sequence).
 */
export function syncClientOptions(clientIdPrefix: string, broker: IClientOptions): IClientOptions {
  return {
    ...broker,
    clientId: `${clientIdPrefix}-${crypto.randomBytes(6).toString('hex')}`,
    protocolVersion: 5,
    clean: true,
    reconnectPeriod: 1000,
    connectTimeout: 10_000,
  };
}
