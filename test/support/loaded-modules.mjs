// `--import` this to record every module the process resolves, one URL a line, in the file named
// by AUTHFACE_TEST_MODULES_FILE (what a command loads: test/hardening/operator-first-hour.test.ts)
import { register } from 'node:module';

const hooks = `
import fs from 'node:fs';
export async function resolve(specifier, context, next) {
  const resolved = await next(specifier, context);
  if (process.env.AUTHFACE_TEST_MODULES_FILE) fs.appendFileSync(process.env.AUTHFACE_TEST_MODULES_FILE, resolved.url + '\\n');
  return resolved;
}`;
register(`data:text/javascript,${encodeURIComponent(hooks)}`);
