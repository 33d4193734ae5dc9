import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { run } from '../support/cli.ts';
import { ROOT } from '../support/datasets.ts';

/** A ZIP archive (stored, no compression) of executable files. */
function zip(files: Record<string, string>): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const [name, text] of Object.entries(files)) {
    const data = Buffer.from(text);
    const crc = zlib.crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(name.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE((3 << 8) | 20, 4); // made by Unix: the mode below counts
    central.writeUInt16LE(20, 6);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(data.length, 20);
    central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(((0o100755 << 16) >>> 0), 38);
    central.writeUInt32LE(offset, 42);
    locals.push(local, Buffer.from(name), data);
    centrals.push(central, Buffer.from(name));
    offset += 30 + name.length + data.length;
  }
  const dir = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(Object.keys(files).length, 8);
  end.writeUInt16LE(Object.keys(files).length, 10);
  end.writeUInt32LE(dir.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, dir, end]);
}

/**
 * Issue 7, section 7: "The README's device command with --kiosk stops on Node 20 because
 * Electron needs 22.12." The kiosk package installs on this Node 20 with npm ci, as the install
 * script runs it: Electron's installer fetches its binary (here from a mirror on this machine
 * standing in for GitHub, which this machine cannot reach) and unpacks it.
 */
describe('the kiosk installs on Node 20', function () {
  this.timeout(180_000);

  it('npm ci of kiosk/ runs Electron\'s installer to the end on this Node', async function () {
    const version = (JSON.parse(fs.readFileSync(path.join(ROOT, 'kiosk', 'package.json'), 'utf8')) as { dependencies: { electron: string } }).dependencies.electron;
    const archive = zip({ electron: '#!/bin/sh\necho electron stand-in\n', version: `v${version}` });
    const file = `electron-v${version}-linux-${process.arch}.zip`;
    const requested: string[] = [];
    const mirror = http.createServer((req, res) => {
      requested.push(req.url ?? '');
      if (req.url?.endsWith(`/${file}`)) return void res.end(archive);
      if (req.url?.endsWith('/SHASUMS256.txt')) return void res.end(`${crypto.createHash('sha256').update(archive).digest('hex')} *${file}\n`);
      res.writeHead(404).end();
    });
    await new Promise<void>((r) => mirror.listen(0, '127.0.0.1', r));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-kiosk-install-'));
    try {
      for (const f of ['package.json', 'package-lock.json', 'main.js', 'policy.js']) fs.copyFileSync(path.join(ROOT, 'kiosk', f), path.join(dir, f));
      const env = {
        ...process.env,
        ELECTRON_MIRROR: `http://127.0.0.1:${(mirror.address() as AddressInfo).port}/`,
        electron_use_remote_checksums: '1', // the stand-in is not the real binary of checksums.json
        electron_config_cache: path.join(dir, 'cache'),
      };
      await run('npm', ['ci', '--no-audit', '--no-fund'], { cwd: dir, env });
      assert.ok(requested.some((u) => u.endsWith(file)), `the installer fetched ${file}: ${requested.join(', ')}`);
      const unpacked = path.join(dir, 'node_modules', 'electron', 'dist', 'electron');
      assert.equal((await run(unpacked, [])).stdout.trim(), 'electron stand-in');
      assert.equal(fs.readFileSync(path.join(dir, 'node_modules', 'electron', 'path.txt'), 'utf8'), 'electron');
    } finally {
      mirror.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
