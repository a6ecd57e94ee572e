/**
 * Runs a script in its own Deno process, as a user would, for the tests that
 * check whole programs (process exit, examples, permissions).
 */

/** A hang guard, not a speed check: a script still running after it is killed. */
export const HANG_GUARD_MS = 30_000;

/** What a script printed, and how it exited. */
export interface ScriptOutput {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `deno run <flags> <script> <args>` without colour and returns its exit code and output. */
export async function runScript(
  script: URL,
  { flags = [], args = [] }: { flags?: string[]; args?: string[] } = {},
): Promise<ScriptOutput> {
  const command = new Deno.Command(Deno.execPath(), {
    args: ["run", ...flags, script.href, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
    signal: AbortSignal.timeout(HANG_GUARD_MS),
  });
  const { code, stdout, stderr } = await command.output();
  const decoder = new TextDecoder();
  return {
    code,
    stdout: decoder.decode(stdout),
    stderr: decoder.decode(stderr),
  };
}
