/** The topics of one device on its broker (its fleet sync has its own: sync/protocol.ts). */
export function topicsFor(prefix: string, deviceId: string) {
  const base = `${prefix}/${deviceId}`;
  return {
    base,
    /** Retained: online (with doors and version) or offline (the last will). */
    status: `${base}/status`,
    command: `${base}/command`,
    commandResult: `${base}/command/result`,
    access: (door: string) => `${base}/door/${door}/access`,
    alarm: (door: string) => `${base}/door/${door}/alarm`,
    /** Retained: the door's lock and contact (DoorStatus). */
    state: (door: string) => `${base}/door/${door}/state`,
  };
}
