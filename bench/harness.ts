// The parent side of the comparison scripts (compare.ts, ab.ts): running a measurement as a
// fresh Deno process and reading its JSON line, describing the machine, and formatting
// medians with their ranges for the markdown tables.

import type { Figures } from "./cases.ts";
import type { Spread } from "./stats.ts";

/** A child's outcome: its figures, or why there are none. */
export type Outcome = { ok: true; figures: Figures } | {
  ok: false;
  error: string;
};

/** How to run one child. */
export interface ChildOptions {
  /** Path of the script to run. */
  script: string;
  /** Arguments after the script. */
  args: string[];
  /** Deno permission flags, e.g. `["--allow-read"]`. */
  permissions: string[];
  /** The child is killed after this many seconds and reported as timed out. */
  timeoutS: number;
  /** Working directory of the child (its deno.json is found from there). */
  cwd?: string;
  /** Aborting kills the child (e.g. on Ctrl-C). */
  signal?: AbortSignal;
  /**
   * Let the child write to this process's stderr as it runs (a progress display), instead
   * of keeping its stderr for the error message.
   */
  inheritStderr?: boolean;
}

/**
 * Runs `deno run <permissions> <script> <args>` in a fresh process and parses the last line
 * of its stdout that starts with `{`. A child that fails, prints no such line, times out or
 * is aborted is an outcome with the head of its stderr, not an exception.
 */
export async function runChild(o: ChildOptions): Promise<Outcome> {
  if (o.signal?.aborted) return { ok: false, error: "aborted" };
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...o.permissions, o.script, ...o.args],
    cwd: o.cwd,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: o.inheritStderr ? "inherit" : "piped",
  }).spawn();
  let killed: "timeout" | "aborted" | undefined;
  const kill = (why: "timeout" | "aborted") => {
    killed ??= why;
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
  };
  const timer = setTimeout(() => kill("timeout"), o.timeoutS * 1000);
  const onAbort = () => kill("aborted");
  o.signal?.addEventListener("abort", onAbort);
  const out = await child.output();
  clearTimeout(timer);
  o.signal?.removeEventListener("abort", onAbort);
  const stdout = new TextDecoder().decode(out.stdout);
  // The head of the child's stderr: the error message and the top of its stack.
  const stderr =
    (o.inheritStderr
      ? "(its stderr went to ours, above)"
      : new TextDecoder().decode(out.stderr))
      // deno-lint-ignore no-control-regex
      .replace(/\x1b\[[0-9;]*m/g, "")
      .split("\n").filter((l) => l.trim() !== "").slice(0, 4).join("\n");
  if (killed !== undefined) {
    const why = killed === "timeout"
      ? `timed out after ${o.timeoutS} s (killed)`
      : "aborted (killed)";
    return { ok: false, error: `${why}${stderr ? ": " + stderr : ""}` };
  }
  const line = stdout.trim().split("\n").filter((l) => l.startsWith("{"))
    .pop();
  if (!out.success || line === undefined) {
    return {
      ok: false,
      error: `exit code ${out.code}: ${stderr || stdout.slice(-500)}`,
    };
  }
  try {
    return { ok: true, figures: JSON.parse(line) as Figures };
  } catch (e) {
    return { ok: false, error: `unreadable JSON line ${line}: ${e}` };
  }
}

/** The 1-minute load average (other work on the machine skews every figure), or "?". */
export async function loadAverage(): Promise<string> {
  try {
    return Deno.loadavg()[0]!.toFixed(2);
  } catch {
    // needs --allow-sys=loadavg; /proc/loadavg read by a subprocess is the fallback
    try {
      const out = await new Deno.Command("cat", { args: ["/proc/loadavg"] })
        .output();
      return new TextDecoder().decode(out.stdout).split(" ")[0] || "?";
    } catch {
      return "?";
    }
  }
}

/** CPU model, logical CPUs, OS and kernel, Deno and V8 versions, in one line. */
export async function machine(): Promise<string> {
  let os = `${Deno.build.os} ${Deno.build.arch}`;
  try {
    os += ` ${Deno.osRelease()}`;
  } catch {
    // needs --allow-sys=osRelease; uname is the fallback
    try {
      const out = await new Deno.Command("uname", { args: ["-r"] }).output();
      if (out.success) os += ` ${new TextDecoder().decode(out.stdout).trim()}`;
    } catch { /* unknown */ }
  }
  let cpu = "CPU model unknown";
  try {
    const text = await Deno.readTextFile("/proc/cpuinfo");
    cpu = /^model name\s*:\s*(.*)$/m.exec(text)?.[1] ?? cpu;
  } catch {
    // /proc needs more than --allow-read in Deno 2; read it with a subprocess
    try {
      const out = await new Deno.Command("grep", {
        args: ["-m1", "^model name", "/proc/cpuinfo"],
      }).output();
      const line = new TextDecoder().decode(out.stdout);
      cpu = /:\s*(.*)$/m.exec(line)?.[1]?.trim() || cpu;
    } catch { /* unknown */ }
  }
  return `${cpu}, ${navigator.hardwareConcurrency} logical CPUs; ${os}; Deno ${Deno.version.deno} (V8 ${Deno.version.v8})`;
}

/** Today's date and time in UTC, to the minute: "2026-12-01 09:59 UTC". */
export function timestamp(): string {
  return new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

/**
 * How a figure is printed: `"rate"` (items/s, three significant digits with k or M),
 * `"int"` (a whole number with thousands separators, e.g. MB/s), or fixed decimals.
 */
export type Style = "rate" | "int" | { digits: number };

/** `x` printed in `style`. */
export function format(x: number, style: Style): string {
  if (style === "rate") {
    // The thresholds sit below 1e6 and 1e3 so that 999,700 prints as 1.00M, not 1000k.
    const [value, suffix] = x >= 999.5e3
      ? [x / 1e6, "M"]
      : x >= 999.5
      ? [x / 1e3, "k"]
      : [x, ""];
    const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
    return `${value.toFixed(digits)}${suffix}`;
  }
  const digits = style === "int" ? 0 : style.digits;
  return x.toLocaleString("en", {
    maximumFractionDigits: digits,
    minimumFractionDigits: digits,
  });
}

/** "median (min–max)" of `s` in `style` ("median" alone for one value), or `missing`. */
export function cell(
  s: Spread | undefined,
  style: Style,
  missing = "failed",
): string {
  if (s === undefined) return missing;
  const m = format(s.median, style);
  if (s.count === 1) return m;
  return `${m} (${format(s.min, style)}–${format(s.max, style)})`;
}

/** A ratio cell: "1.23× (1.10–1.31)", from per-round ratios. */
export function ratioCell(s: Spread | undefined): string {
  if (s === undefined) return "—";
  const m = `${s.median.toFixed(2)}×`;
  if (s.count === 1) return m;
  return `${m} (${s.min.toFixed(2)}–${s.max.toFixed(2)})`;
}
