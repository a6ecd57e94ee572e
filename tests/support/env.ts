/**
 * Reads an environment variable a test may use to run longer (more seeds, a
 * longer soak), only if `--allow-env` grants it: CI runs without, on defaults.
 *
 * @module
 */

/** The variable `name`, or `undefined` when it is unset or not granted. */
export function readEnv(name: string): string | undefined {
  try {
    const { state } = Deno.permissions.querySync({
      name: "env",
      variable: name,
    });
    return state === "granted" ? Deno.env.get(name) : undefined;
  } catch {
    return undefined;
  }
}
