import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT } from './support/datasets.ts';

/**
 * An install downloads nothing beyond npm packages: every package of the lockfile that has an
 * install script is decided in package.json's allowScripts, and those allowed only compile here
 * (node-gyp against Node's own headers). onnxruntime-node's script fetches CUDA libraries: denied.
 */
describe('install: no download script runs', function () {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { allowScripts: Record<string, boolean>; overrides: Record<string, Record<string, string>> };
  const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { hasInstallScript?: boolean }> };
  const withScripts = Object.entries(lock.packages)
    .filter(([key, p]) => key !== '' && p.hasInstallScript)
    .map(([key]) => key.slice(key.lastIndexOf('node_modules/') + 'node_modules/'.length));

  it('every package with an install script is decided, and only the compiled ones are allowed', function () {
    assert.ok(withScripts.includes('onnxruntime-node'), 'the lockfile knows onnxruntime-node has an install script');
    for (const name of withScripts) assert.ok(name in pkg.allowScripts, `${name}'s install script is not decided in allowScripts`);
    assert.equal(pkg.allowScripts['onnxruntime-node'], false, "onnxruntime-node's script downloads CUDA libraries");
    assert.deepEqual(Object.entries(pkg.allowScripts).filter(([, allowed]) => allowed).map(([n]) => n).sort(), ['better-sqlite3', 'epoll']);
  });

  it("the model's package brings its model file only: its build tools are replaced by an empty package", function () {
    const replaced = pkg.overrides['faceplugin-face-recognition-js'];
    assert.ok(Object.keys(replaced).length >= 10);
    for (const spec of Object.values(replaced)) assert.equal(spec, 'file:vendor/no-dependency-1.0.0.tgz');
    assert.ok(fs.existsSync(path.join(ROOT, 'vendor', 'no-dependency-1.0.0.tgz')));
    // the model in models/ came from the installed package, byte for byte
    const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'models', 'manifest.json'), 'utf8')) as { models: { package: string; files: { name: string; source: string }[] }[] };
    const entry = manifest.models.find((m) => m.package === 'faceplugin-face-recognition-js');
    assert.ok(entry, 'the manifest lists the MobileFaceNet package');
    for (const f of entry.files) {
      const installed = fs.readFileSync(path.join(ROOT, 'node_modules', entry.package, f.source));
      assert.ok(installed.equals(fs.readFileSync(path.join(ROOT, 'models', f.name))), `${f.name} is the package's file`);
    }
    assert.equal(fs.existsSync(path.join(ROOT, 'node_modules', 'onnxruntime-node', 'bin', 'napi-v6', 'linux', 'x64', 'libonnxruntime_providers_cuda.so')), false, 'no CUDA library was downloaded');
  });
});
