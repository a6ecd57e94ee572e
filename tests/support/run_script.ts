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
  /** The signal that ended the script (SIGTERM when the hang guard killed it), or null. */
  signal: Deno.Signal | null;
}

/** How to run a script. */
export interface ScriptOptions {
  /** Flags for `deno run`, before the script. */
  flags?: string[];
  /** Arguments for the script, after it. */
  args?: string[];
  /** Milliseconds after which the script is killed (a hang guard, not a speed check). */
  timeout?: number;
}

/** Runs `deno run <flags> <script> <args>` without colour and returns its exit code and output. */
export async function runScript(
  script: URL,
  { flags = [], args = [], timeout = HANG_GUARD_MS }: ScriptOptions = {},
): Promise<ScriptOutput> {
  const command = new Deno.Command(Deno.execPath(), {
    args: ["run", ...flags, script.href, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
    signal: AbortSignal.timeout(timeout),
  });
  const { code, stdout, stderr, signal } = await command.output();
  const decoder = new TextDecoder();
  return {
    code,
    stdout: decoder.decode(stdout),
    stderr: decoder.decode(stderr),
    signal,
  };
}
