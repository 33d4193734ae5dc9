#!/usr/bin/env node
// The `authface` command: runs the compiled CLI (built by `npm install` / `npm run build`).
import('../dist/cli/main.js').catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist/cli/main.js')) {
    console.error('authface: the service is not built yet; run `npm install` (or `npm run build`) first');
    process.exit(1);
  }
  throw err;
});
