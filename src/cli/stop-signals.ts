/** How often a server started through npm checks that npm is still there. */
const PARENT_CHECK_MS = 1000;

/**
 * Runs `stop` once, on SIGINT or SIGTERM, or when the npm process that started this server is
 * gone. `npm start`, `npm exec` and `npx` do not pass a SIGTERM on to the server they started
 * (found: killing the `npx authface serve &` job left the server holding its port), so a server
 * whose parent was npm (npm sets npm_command) stops when it is orphaned.
 */
export function stopOnSignals(stop: (why: string) => unknown): void {
  let stopping = false;
  const once = (why: string) => {
    if (stopping) return;
    stopping = true;
    void stop(why);
  };
  process.once('SIGINT', () => once('SIGINT'));
  process.once('SIGTERM', () => once('SIGTERM'));
  if (!process.env.npm_command) return;
  const parent = process.ppid;
  const watch = setInterval(() => {
    if (process.ppid === parent) return;
    process.stderr.write('authface: the npm process that started this server is gone: stopping\n');
    once('orphaned');
  }, PARENT_CHECK_MS);
  watch.unref();
}
