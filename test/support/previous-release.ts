import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from './datasets.ts';

/** The last commit before MobileFaceNet: the release a site upgrades from. */
export const PREVIOUS_RELEASE = '3a504769a69e31dac86efc946809aac7c0292961';

/**
 * The previous release's sources, from this repository's history, in a temporary directory that
 * uses this checkout's installed packages and models (the release needs nothing this one lacks).
 */
export function previousRelease(): string {
  try {
    execFileSync('git', ['-C', ROOT, 'cat-file', '-e', `${PREVIOUS_RELEASE}^{commit}`]);
  } catch {
    throw new Error(`the upgrade test needs commit ${PREVIOUS_RELEASE} of this repository's history (a shallow clone lacks it: git fetch --unshallow)`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authface-previous-release-'));
  const archive = execFileSync('git', ['-C', ROOT, 'archive', '--format=tar', PREVIOUS_RELEASE, 'src', 'bin', 'package.json']);
  execFileSync('tar', ['-x', '-C', dir], { input: archive });
  for (const entry of ['node_modules', 'models']) fs.symlinkSync(path.join(ROOT, entry), path.join(dir, entry));
  return dir;
}
