import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { protocolDocument } from '../src/sync/protocol-doc.ts';

/** Writes firmware-config/sync-protocol.md from the protocol's zod schemas. */
const file = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'firmware-config', 'sync-protocol.md');
fs.writeFileSync(file, protocolDocument());
console.log(`wrote ${path.relative(process.cwd(), file)}`);
