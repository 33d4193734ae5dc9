#!/usr/bin/env node
// Compiles src/ into dist/ (what bin/authface.js runs). It changes nothing (and says nothing) when
// dist/ is newer than every source, and otherwise builds beside it and swaps the new one in
// whole: a running service never sees dist/ missing or half-written. npm runs it on install
// (prepare), and again each time `npx authface` links this project into a fresh npx cache.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const stamp = path.join(dist, '.built');

function newest(dir) {
  let t = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    t = Math.max(t, entry.isDirectory() ? newest(p) : fs.statSync(p).mtimeMs);
  }
  return t;
}

const sources = Math.max(newest(path.join(root, 'src')), ...['tsconfig.json', 'tsconfig.build.json', 'package-lock.json'].map((f) => fs.statSync(path.join(root, f)).mtimeMs));
// silent when there is nothing to do: `npx authface …` output stays the command's own
if (!process.argv.includes('--force') && fs.existsSync(stamp) && fs.statSync(stamp).mtimeMs >= sources) process.exit(0);

const next = path.join(root, 'dist.next');
const old = path.join(root, 'dist.old');
fs.rmSync(next, { recursive: true, force: true });
fs.rmSync(old, { recursive: true, force: true });
const tsc = path.join(path.dirname(fileURLToPath(import.meta.resolve('typescript/package.json'))), 'bin', 'tsc');
execFileSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.build.json'), '--outDir', next], { stdio: 'inherit' });
fs.writeFileSync(path.join(next, '.built'), `${new Date().toISOString()}\n`);
if (fs.existsSync(dist)) fs.renameSync(dist, old);
fs.renameSync(next, dist);
fs.rmSync(old, { recursive: true, force: true });
console.log('build: dist/ compiled');
