import { closeSharedAnalyzer } from './support/service.ts';

/** Root hooks: the face engine workers are started once for the whole run and stopped at the end. */
export const mochaHooks = {
  async afterAll() {
    await closeSharedAnalyzer();
  },
};
