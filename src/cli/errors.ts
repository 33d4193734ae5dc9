import { OperatorError } from '../errors.ts';

/** A command that cannot do what it was asked (unknown tenant, no such key…): one line, exit 2. */
export class CommandError extends OperatorError {}
