import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** This release's version, from package.json (from src/ or dist/ alike). */
export const VERSION = (
  JSON.parse(fs.readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'package.json'), 'utf8')) as {
    version: string;
  }
).version;
