/**
 * Sandboxed stages: the `permissions` option's values, and whether Deno
 * allows them here. A `Worker` with `deno.permissions` needs Deno's
 * `--unstable-worker-options` flag (or `"unstable": ["worker-options"]` in the
 * config file); without it Deno ends the whole process with exit code 70,
 * which would lose every other pipeline's data. Deno offers no way to ask
 * whether the flag is on, so this reads what it may: the process's command
 * line (`/proc/self/cmdline`) and the config file, each only where read
 * permission is already granted (it never prompts).
 *
 * @module
 */

import { describe } from "../checks.ts";

/**
 * One kind of permission of a sandboxed stage: inherited, all or nothing, or a list.
 *
 * @example Usage
 * ```ts
 * import type { PermissionValue } from "@mpipe/mpipe";
 *
 * const net: PermissionValue = ["api.example.com:443"];
 * const env: PermissionValue = false;
 * ```
 */
export type PermissionValue = "inherit" | boolean | string[];

/**
 * The permissions of a stage's workers: `"inherit"` (the default), `"none"`,
 * or one value per kind, as Deno's `Worker` takes them. As in Deno, kinds
 * left out are denied.
 *
 * @example Usage
 * ```ts
 * import { OrderedStage, type StagePermissions } from "@mpipe/mpipe";
 *
 * // A parser of untrusted input that may read one folder and nothing else
 * // (running it needs Deno's --unstable-worker-options).
 * const permissions: StagePermissions = { read: ["./data"] };
 * const parse = new OrderedStage((text: string) => text.length, 2, {
 *   permissions,
 * });
 * ```
 */
export type StagePermissions = "inherit" | "none" | {
  /** File system reads. */
  read?: PermissionValue;
  /** File system writes. */
  write?: PermissionValue;
  /** Network access (hosts). */
  net?: PermissionValue;
  /** Environment variables. */
  env?: PermissionValue;
  /** Subprocesses. */
  run?: PermissionValue;
  /** System information. */
  sys?: PermissionValue;
  /** Foreign functions. */
  ffi?: PermissionValue;
  /** Dynamic imports (hosts). */
  import?: PermissionValue;
};

const KINDS = ["read", "write", "net", "env", "run", "sys", "ffi", "import"];

/** Checks a stage's `permissions` option; throws a `TypeError` naming the bad part. */
export function checkPermissions(kind: string, value: unknown): void {
  if (value === "inherit" || value === "none") return;
  const fail = (what: string, got: unknown) => {
    throw new TypeError(
      `${kind}: 'options.permissions${what}' must be ${
        what === ""
          ? '"inherit", "none" or an object of permission kinds'
          : '"inherit", a boolean or a list of strings'
      }, got ${describe(got)}`,
    );
  };
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    fail("", value);
  }
  for (const [key, field] of Object.entries(value as object)) {
    if (!KINDS.includes(key)) {
      throw new TypeError(
        `${kind}: 'options.permissions.${key}' is not a permission kind; the kinds are ${
          KINDS.join(", ")
        }`,
      );
    }
    const ok = field === "inherit" || typeof field === "boolean" ||
      (Array.isArray(field) && field.every((item) => typeof item === "string"));
    if (!ok) fail(`.${key}`, field);
  }
}

/**
 * Whether Deno allows `Worker` permissions in this process: true, false, or
 * undefined when it cannot tell (then the pipeline proceeds).
 */
export function workerOptionsAllowed(): boolean | undefined {
  const cmdline = readIfGranted("/proc/self/cmdline");
  if (cmdline === undefined) return undefined;
  const args = cmdline.split("\0");
  if (args.some((arg) => arg === "--unstable-worker-options")) return true;
  if (args.includes("--no-config")) return false;
  const config = configFile(args);
  if (config === undefined) return undefined;
  if (config === null) return false;
  return config.includes("worker-options") ? unstableList(config) : false;
}

/** Whether the config text's `unstable` list names worker-options (undefined if it cannot be parsed). */
function unstableList(text: string): boolean | undefined {
  try {
    // JSONC: drop comments and trailing commas (enough for a config file).
    const json = text.replace(
      /("(?:\\.|[^"\\])*")|\/\/[^\n]*|\/\*[\s\S]*?\*\//g,
      "$1",
    )
      .replace(/,(\s*[}\]])/g, "$1");
    const unstable = (JSON.parse(json) as { unstable?: unknown }).unstable;
    return Array.isArray(unstable) && unstable.includes("worker-options");
  } catch {
    return undefined;
  }
}

/**
 * The text of the config file Deno uses: the `--config` one, or the first
 * deno.json(c) found from the main module's folder up (from the current
 * folder for a remote main module). Null if there is none; undefined if it
 * cannot tell.
 */
function configFile(args: string[]): string | null | undefined {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const given = arg.startsWith("--config=")
      ? arg.slice(9)
      : arg === "--config" || arg === "-c"
      ? args[i + 1]
      : undefined;
    if (given !== undefined) return readIfGranted(given);
  }
  let dir: string;
  try {
    const main = new URL(Deno.mainModule);
    dir = main.protocol === "file:"
      ? decodeURIComponent(main.pathname).replace(/\/[^/]*$/, "")
      : Deno.cwd();
  } catch {
    return undefined;
  }
  for (;;) {
    for (const name of ["deno.json", "deno.jsonc"]) {
      const path = `${dir}/${name}`;
      const state = Deno.permissions.querySync({ name: "read", path }).state;
      if (state !== "granted") return undefined;
      try {
        return Deno.readTextFileSync(path);
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) return undefined;
      }
    }
    const parent = dir.replace(/\/[^/]*$/, "");
    if (parent === dir || parent === "") return null;
    dir = parent;
  }
}

/** The file's text if read permission is granted for it, else undefined (never prompts). */
function readIfGranted(path: string): string | undefined {
  try {
    if (
      Deno.permissions.querySync({ name: "read", path }).state !== "granted"
    ) {
      return undefined;
    }
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
}
