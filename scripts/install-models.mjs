#!/usr/bin/env node
// Copies the face models out of their npm packages into models/ and checks each against the
// SHA-256 in models/manifest.json. Runs at `npm install` (postinstall); nothing is downloaded.
// `--update` rewrites the manifest from the installed packages (after a deliberate upgrade).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const modelsDir = path.join(root, 'models');
const manifestFile = path.join(modelsDir, 'manifest.json');
const require = createRequire(path.join(root, 'package.json'));

/** The package directory, found through its main entry (some packages do not export package.json). */
function packageDir(name) {
  let dir = path.dirname(require.resolve(name));
  while (!fs.existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  return dir;
}

const sha256 = (file) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
const manifest = JSON.parse(fs.readFileSync(manifestFile, 'utf8'));
const update = process.argv.includes('--update');
let failed = false;
let copied = 0;

for (const model of manifest.models) {
  const dir = packageDir(model.package);
  const version = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
  if (version !== model.version && !update) {
    console.error(`models: ${model.package} is ${version}, the manifest expects ${model.version}`);
    failed = true;
    continue;
  }
  model.version = version;
  for (const file of model.files) {
    const source = path.join(dir, file.source);
    const target = path.join(modelsDir, file.name);
    const sum = sha256(source);
    if (update) file.sha256 = sum;
    if (sum !== file.sha256) {
      console.error(`models: ${file.source} from ${model.package} has SHA-256 ${sum}, expected ${file.sha256}`);
      failed = true;
      continue;
    }
    // a file already in place is left alone: a running service may be reading it
    if (fs.existsSync(target) && sha256(target) === sum) continue;
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.copyFileSync(source, `${target}.partial`);
    fs.renameSync(`${target}.partial`, target);
    copied++;
  }
}
if (update) fs.writeFileSync(manifestFile, JSON.stringify(manifest, null, 2) + '\n');
if (failed) {
  console.error('models: verification failed; reinstall the packages (npm ci) or check the lockfile');
  process.exit(1);
}
// silent when every file was already in place (`npx authface …` runs this again)
if (copied > 0 || update) console.log(`models: ${manifest.models.reduce((n, m) => n + m.files.length, 0)} files verified into models/ (${copied} copied)`);
