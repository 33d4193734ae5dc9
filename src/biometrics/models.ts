import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** models/ at the project root (from src/biometrics or dist/biometrics alike). */
export const MODELS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'models');

interface Manifest {
  models: { package: string; version: string; files: { name: string; sha256: string }[] }[];
}

export class ModelIntegrityError extends Error {}

/**
 * Reads model files from models/, checking every byte against the committed manifest so a
 * tampered or half-copied model is refused at start rather than producing wrong matches.
 */
export class ModelFiles {
  readonly #expected = new Map<string, string>();

  constructor(readonly dir: string = MODELS_DIR) {
    const manifestPath = path.join(dir, 'manifest.json');
    const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8')) as Manifest;
    for (const m of manifest.models) for (const f of m.files) this.#expected.set(f.name, f.sha256);
  }

  read(name: string): Buffer {
    const expected = this.#expected.get(name);
    if (!expected) throw new ModelIntegrityError(`model file ${name} is not in models/manifest.json`);
    const file = path.join(this.dir, name);
    if (!fs.existsSync(file)) {
      throw new ModelIntegrityError(`model file ${file} is missing: run npm install (it copies models from npm packages)`);
    }
    const bytes = fs.readFileSync(file);
    const sum = crypto.createHash('sha256').update(bytes).digest('hex');
    if (sum !== expected) throw new ModelIntegrityError(`model file ${file} fails its checksum: run npm install again`);
    return bytes;
  }

  /** Reads every listed file once (doctor); returns how many there are. */
  verifyAll(): number {
    for (const name of this.#expected.keys()) this.read(name);
    return this.#expected.size;
  }

  readJson<T>(name: string): T {
    return JSON.parse(this.read(name).toString('utf8')) as T;
  }

  /** Weight specs and the concatenated weight bytes of a tfjs weights manifest. */
  weights(
    manifestName: string,
    groups: { paths: string[]; weights: unknown[] }[],
  ): { specs: unknown[]; data: ArrayBuffer } {
    const dir = path.dirname(manifestName);
    const specs = groups.flatMap((g) => g.weights);
    const buffers = groups.flatMap((g) => g.paths.map((p) => this.read(path.posix.join(dir, p))));
    const all = Buffer.concat(buffers);
    return { specs, data: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength) as ArrayBuffer };
  }
}
