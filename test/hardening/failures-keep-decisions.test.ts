import assert from 'node:assert/strict';
import { EventBus, type AccessEvent } from '../../src/core/events.ts';
import { parseDeviceConfig } from '../../src/device/config.ts';
import { Client } from '../support/client.ts';
import { type TestDevice, startTestDevice } from '../support/device.ts';
import { type Photos, photos } from '../support/photos.ts';

/**
 * Issue 7, section 5: "timezone: Europe/Pairs passed validation and doctor. Every door decision then
 * threw inside an event listener after the commit. The kiosk got a 500, and no access event or
 * audit row was written."
 */
describe('mistakes are caught at start, and a failure never swallows a decision', function () {
  const schedule = (timezone: string) => ({ timezone, windows: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '23:59' }] });

  it('a misspelled time zone (Europe/Pairs) is refused when the device file is read, naming the key', function () {
    assert.throws(
      () => parseDeviceConfig({ device_id: 'd1', doors: [{ id: 'main', allow: { schedule: schedule('Europe/Pairs') } }] }),
      /doors\.0\.allow\.schedule\.timezone: unknown time zone "Europe\/Pairs"/,
    );
    assert.doesNotThrow(() => parseDeviceConfig({ device_id: 'd1', doors: [{ id: 'main', allow: { schedule: schedule('Europe/Paris') } }] }));
  });

  it('a listener that throws does not stop the other listeners, nor the code that emitted', function () {
    const failures: string[] = [];
    const bus = new EventBus((name, err) => failures.push(`${name}: ${(err as Error).message}`));
    const seen: string[] = [];
    bus.on('kiosk.open', () => {
      throw new Error('broken feature');
    });
    bus.on('kiosk.open', (e) => seen.push(e.doorId));
    assert.doesNotThrow(() => bus.emit('kiosk.open', { doorId: 'main', biometryUrl: '/capture?t=x' }));
    assert.deepEqual(seen, ['main']);
    assert.deepEqual(failures, ['kiosk.open: broken feature']);
  });

  describe('a door whose policy cannot be evaluated (the time zone of the finding, slipped past validation)', function () {
    let device: TestDevice;
    let img: Photos;
    const decided: AccessEvent[] = [];

    before(async function () {
      img = await photos();
      device = await startTestDevice(
        { device_id: 'tz-test', liveness: 'passive', doors: [{ id: 'main', relay: { driver: 'simulated' }, allow: { schedule: schedule('Europe/Paris') } }], mqtt: { embedded: { port: 0 } } },
        {},
        // what the device ran with before time zones were validated
        { alter: (c) => void (c.doors[0].allow.schedule!.timezone = 'Europe/Pairs') },
      );
      device.svc.service.events.on('access.decided', (e) => decided.push(e));
      const api = new Client(device.svc.url, device.apiKey);
      assert.equal((await api.run('enroll', img.personA.slice(0, 3), { externalUserId: 'alice' })).result.status, 'success');
    });
    after(async function () {
      await device?.close();
    });

    it('an enrolled person is denied with policy_error: recorded in the audit log, announced, no pulse, and the kiosk gets its answer (not a 500)', async function () {
      const { token, clientState } = await device.svc.service.device!.kiosk.startIdentify('main');
      const capture = new Client(device.svc.url, '').capture(token);
      await capture.session();
      for (const frame of img.personA.slice(0, 3)) assert.equal((await capture.frame(frame)).status, 200);
      const completion = await capture.complete();
      assert.equal(completion.status, 200, JSON.stringify(completion.body));
      assert.equal(completion.body.status, 'success', 'the identification itself succeeded');

      const event = decided.find((e) => e.clientState === clientState);
      assert.ok(event, 'an access decision was announced');
      assert.deepEqual([event.result, event.reason, event.externalUserId], ['denied', 'policy_error', 'alice']);
      const audit = device.svc.service.store.audit.list(device.tenantId).find((a) => a.id === event.eventId);
      assert.ok(audit, 'the denial is in the audit log');
      assert.deepEqual([audit.type, audit.result, audit.reason], ['access_decision', 'denied', 'policy_error']);
      assert.equal(device.relay('main').pulses.length, 0);
      assert.match(device.svc.logs(), /access policy failed/);
    });
  });
});
