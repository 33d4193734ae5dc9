import { OperatorError } from '../errors.ts';

/** A hub operation that cannot be done as asked (the message says what to do). */
export class HubError extends OperatorError {}

/** Why a claim code was refused (`authface join` says which, and what to do). */
export class ClaimError extends Error {
  constructor(
    readonly reason: 'unknown_code' | 'code_used' | 'code_expired' | 'name_taken',
    message: string,
  ) {
    super(message);
  }
}
