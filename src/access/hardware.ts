import { createRequire } from 'node:module';
import type { DoorConfig } from '../device/config.ts';
import { OperatorError } from '../errors.ts';

/**
 * Door hardware behind two small interfaces, each with a real driver (a GPIO line through
 * `onoff`) and a simulated one (records what happens; the default where the board has no GPIO).
 */
export interface Relay {
  /** Closes the relay for `ms` (a pulse already running is extended). */
  pulse(ms: number): void;
  close(): void;
}

export interface DoorContact {
  /** Calls back with `true` when the door opens and `false` when it closes. */
  onChange(listener: (open: boolean) => void): void;
  isOpen(): boolean;
  close(): void;
}

export interface Pulse {
  at: number;
  ms: number;
}

export class SimulatedRelay implements Relay {
  readonly pulses: Pulse[] = [];
  #listeners: ((p: Pulse) => void)[] = [];

  pulse(ms: number): void {
    const p = { at: performance.now(), ms };
    this.pulses.push(p);
    for (const l of this.#listeners) l(p);
  }

  /** For tests and the benchmark: called on every pulse. */
  onPulse(listener: (p: Pulse) => void): void {
    this.#listeners.push(listener);
  }

  close(): void {
    this.#listeners = [];
  }
}

export class SimulatedContact implements DoorContact {
  #open = false;
  #listeners: ((open: boolean) => void)[] = [];

  /** Opens or closes the simulated door. */
  set(open: boolean): void {
    if (open === this.#open) return;
    this.#open = open;
    for (const l of this.#listeners) l(open);
  }

  onChange(listener: (open: boolean) => void): void {
    this.#listeners.push(listener);
  }

  isOpen(): boolean {
    return this.#open;
  }

  close(): void {
    this.#listeners = [];
  }
}

interface OnoffGpio {
  writeSync(value: 0 | 1): void;
  readSync(): 0 | 1;
  watch(cb: (err: Error | null | undefined, value: 0 | 1) => void): void;
  unexport(): void;
}
interface Onoff {
  Gpio: { accessible: boolean; new (pin: number, direction: string, edge?: string, options?: object): OnoffGpio };
}

function onoff(): Onoff {
  return createRequire(import.meta.url)('onoff') as Onoff;
}

/** Whether this machine exposes GPIO lines to us (false on a server or a laptop). */
export function gpioAccessible(): boolean {
  try {
    return onoff().Gpio.accessible;
  } catch {
    return false;
  }
}

export class GpioRelay implements Relay {
  readonly #line: OnoffGpio;
  #timer: NodeJS.Timeout | undefined;

  constructor(pin: number, activeLow: boolean) {
    const { Gpio } = onoff();
    this.#line = new Gpio(pin, 'out', 'none', { activeLow });
    this.#line.writeSync(0);
  }

  pulse(ms: number): void {
    this.#line.writeSync(1);
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#line.writeSync(0), ms);
  }

  close(): void {
    clearTimeout(this.#timer);
    this.#line.writeSync(0);
    this.#line.unexport();
  }
}

export class GpioContact implements DoorContact {
  readonly #line: OnoffGpio;
  readonly #openValue: 0 | 1;

  constructor(pin: number, openWhenHigh: boolean) {
    const { Gpio } = onoff();
    this.#line = new Gpio(pin, 'in', 'both', { debounceTimeout: 20 });
    this.#openValue = openWhenHigh ? 1 : 0;
  }

  onChange(listener: (open: boolean) => void): void {
    this.#line.watch((err, value) => {
      if (!err) listener(value === this.#openValue);
    });
  }

  isOpen(): boolean {
    return this.#line.readSync() === this.#openValue;
  }

  close(): void {
    this.#line.unexport();
  }
}

/** The driver a config asks for; `auto` is GPIO where the board has it, else simulated. */
export function useGpio(driver: 'auto' | 'gpio' | 'simulated'): boolean {
  if (driver === 'simulated') return false;
  if (driver === 'gpio') return true;
  return gpioAccessible();
}

/** A door's hardware asked for something this machine does not have; the message names the key. */
export class HardwareError extends OperatorError {}

export interface DoorDrivers {
  relay: Relay;
  contact: DoorContact | null;
}

/**
 * The relays and contacts of every door. Opening it drives every relay off, and it is the first
 * thing a device does at start, before it reads a single template: whatever state the lines were
 * left in (a crash mid-pulse, a board that boots with them high), the doors are locked first.
 */
export class DoorHardware {
  private constructor(readonly doors: ReadonlyMap<string, DoorDrivers>) {}

  static open(doors: readonly DoorConfig[]): DoorHardware {
    const gpio = gpioAccessible();
    doors.forEach((door, i) => {
      for (const [key, driver] of [['relay', door.relay.driver], ['contact', door.contact?.driver]] as const) {
        if (driver === 'gpio' && !gpio) {
          throw new HardwareError(
            `doors.${i}.${key}.driver is gpio, but this machine exposes no GPIO lines (/sys/class/gpio): on the door device add the service user to the gpio group; to try the configuration elsewhere set driver: auto (simulated where there is no GPIO)`,
          );
        }
      }
    });
    const opened = new Map<string, DoorDrivers>();
    try {
      for (const door of doors) {
        const relay = useGpio(door.relay.driver) ? new GpioRelay(door.relay.pin, door.relay.active_low) : new SimulatedRelay();
        opened.set(door.id, { relay, contact: null }); // off from here on
        const c = door.contact;
        if (c) opened.set(door.id, { relay, contact: useGpio(c.driver) ? new GpioContact(c.pin, c.open_when_high) : new SimulatedContact() });
      }
    } catch (err) {
      new DoorHardware(opened).close();
      throw err;
    }
    return new DoorHardware(opened);
  }

  get(doorId: string): DoorDrivers | undefined {
    return this.doors.get(doorId);
  }

  close(): void {
    for (const d of this.doors.values()) {
      d.relay.close();
      d.contact?.close();
    }
  }
}
