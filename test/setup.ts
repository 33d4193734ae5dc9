import { servedChildren } from './support/cli.ts';
import { closeSharedAnalyzer } from './support/service.ts';

/** Root hooks: the face engine workers are started once for the whole run and stopped at the end. */
export const mochaHooks = {
  async afterAll() {
    await closeSharedAnalyzer();
    for (const child of servedChildren) child.kill('SIGKILL'); // left by a test that failed half-way
    // a test that leaks a handle would keep the run alive for ever: name what is left and fail
    setTimeout(() => {
      const handles = [...(process as unknown as { _getActiveHandles(): object[] })._getActiveHandles().map((h) => h.constructor.name), ...process.getActiveResourcesInfo()];
      console.error(`the test run did not end: open handles ${handles.join(', ')}`);
      // mocha's own exit handler sets the code to the number of failed tests: this one runs after it
      process.on('exit', () => {
        process.exitCode = 1;
      });
      process.exit(1);
    }, 15_000).unref();
  },
};
