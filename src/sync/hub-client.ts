import type crypto from 'node:crypto';
import { type SignedPurpose, signMessage } from './signature.ts';
import { challengeSchema, proveRegistration } from './signing-registration.ts';

/** How long a device waits for the hub's HTTP answer. */
const HTTP_TIMEOUT_MS = 5000;

/**
 * What a device asks of its hub over HTTP (sync.hub_url) rather than over the broker: its notice,
 * when the broker turns it away (POST /fleet/v1/notice), and the registration of its signing key,
 * when it joined with an earlier release (POST /fleet/v1/signing-key; sync/signing-registration.ts).
 * Each request is signed with the device's own key; what the answers say is checked by the caller.
 */
export class HubClient {
  constructor(
    private readonly hubUrl: string,
    private readonly device: { tenantId: string; deviceId: string; signingKey: crypto.KeyObject; signingPublicKey: string },
  ) {}

  /** The hub's notice for this device as it sent it (unchecked), or why there is none. */
  async notice(): Promise<{ notice: unknown } | { status: number }> {
    const { tenantId, deviceId } = this.device;
    const res = await this.#post('notice', this.#sign('notice-request', { tenant_id: tenantId, device_id: deviceId, at: new Date().toISOString() }));
    if (!res.ok) return { status: res.status };
    return { notice: ((await res.json()) as { notice?: unknown }).notice ?? null };
  }

  /**
   * Registers this device's signing key, proving the device key pair it joined with: true once the
   * hub holds it (also when it did already), false when it refused (another key, or revoked).
   */
  async registerSigningKey(devicePrivateKeyPem: string): Promise<{ registered: boolean; status: number }> {
    const request = { tenant_id: this.device.tenantId, device_id: this.device.deviceId, signing_key: this.device.signingPublicKey };
    const asked = await this.#post('signing-key/challenge', request);
    if (!asked.ok) return { registered: false, status: asked.status };
    const { challenge, expires_at } = (await asked.json()) as Record<string, unknown>;
    const given = challengeSchema.parse({ challenge, expires_at });
    const proof = proveRegistration(devicePrivateKeyPem, { ...request, ...given });
    const answer = await this.#post('signing-key', this.#sign('signing-key', { ...request, ...given, proof }));
    return { registered: answer.ok, status: answer.status };
  }

  #sign<T extends object>(purpose: SignedPurpose, message: T): T & { sig: string } {
    return signMessage(this.device.signingKey, purpose, this.device.tenantId, message);
  }

  #post(route: string, body: object): Promise<Response> {
    return fetch(new URL(`/fleet/v1/${route}`, this.hubUrl), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(HTTP_TIMEOUT_MS),
    });
  }
}
