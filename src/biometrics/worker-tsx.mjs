// Development/test bootstrap for TypeScript workers: registers tsx inside the worker thread,
// then imports the .ts entry given as the first worker argument. Compiled builds never use it.
import { register } from 'tsx/esm/api';

register();
await import(process.argv[2]);
