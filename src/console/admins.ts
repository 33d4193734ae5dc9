/** At least this long: an admin opens doors from the console. */
export const MIN_ADMIN_PASSWORD = 12;

/** What is wrong with a new admin's name or password, or null (`authface hub admin add`, `authface admin add`). */
export function adminProblem(name: string, password: string): string | null {
  if (!/^[A-Za-z0-9_.@-]{1,64}$/.test(name)) return `--name ${name}: use 1-64 letters, digits, _ . @ or -`;
  if (password.length < MIN_ADMIN_PASSWORD) return `the password must be at least ${MIN_ADMIN_PASSWORD} characters (an admin can open every door)`;
  return null;
}
