// Side-by-side comparison of MPipe and the plain postMessage baseline on the workloads of
// /work/shared/BENCHMARKS.md, at full size, each measurement in a fresh process, project and
// baselines alternating, and a markdown table of medians and ratios at the end.
//
//   deno run --allow-read --allow-run bench/compare.ts [--rounds N] [--quick] [--only W1,W4]
//                                                      [--timeout SECONDS]
//
// (`--allow-sys=osRelease,loadavg` spares the subprocesses that read the kernel release and
// the load average for the header.) Progress goes to
// stderr, the table to stdout. Each measurement is a child process
// `deno run --allow-read bench/compare.ts --one <workload> <variant> [--quick]` printing one
// JSON line; a child that fails or exceeds the timeout is reported and left out of the table.

import process from "node:process";
import { OrderedStage, Pipeline } from "../mod.ts";
import {
  type BaselineVariant,
  MPipeRunner,
  type Runner,
  SPECS,
  startMPipe,
  startPostMessage,
  w3Spec,
  type WorkloadId,
} from "./mpipe_runner.ts";
import { PostMessagePipeline } from "./postmessage_pipeline.ts";
import * as w from "./workloads.ts";

/** Everything measured, in the order of the table. */
const CASES = ["W1", "W2", "W3", "W4", "W5", "W6", "startup", "idle"] as const;
type Case = typeof CASES[number];

/** The variants of each case: the simple baseline first, MPipe last. */
const VARIANTS: Record<Case, string[]> = {
  W1: ["pm", "pm-batch", "mpipe"],
  W2: ["pm", "pm-batch", "mpipe"],
  W3: ["pm", "mpipe"],
  W4: ["pm", "pm-transfer", "mpipe"],
  W5: ["pm", "pm-batch", "mpipe"],
  W6: ["pm", "mpipe"],
  startup: ["workers", "mpipe"],
  idle: ["pm", "mpipe"],
};

/** One child's figures. */
type Figures = Record<string, number>;

const IDLE_MS = 2000;
const STARTUP_WORKERS = 4;

// ================================================================ child: one measurement

function sizeOf(id: WorkloadId, quick: boolean): number {
  return quick ? Math.max(1, Math.round(w.N[id] / 10)) : w.N[id];
}

function start(
  id: WorkloadId,
  variant: string,
  w3Workers?: number,
): Promise<Runner & { close(): unknown }> {
  if (variant === "mpipe") return startMPipe(id, { w3Workers });
  const pm: Record<string, BaselineVariant> = {
    "pm": "simple",
    "pm-batch": "batch",
    "pm-transfer": "transfer",
  };
  const v = pm[variant];
  if (v === undefined) throw new Error(`unknown variant ${variant} of ${id}`);
  return startPostMessage(id, v, { w3Workers });
}

/** Items/s (and MB/s) of one timed run of N tasks through a warmed-up pipeline. */
async function throughput(
  id: WorkloadId,
  variant: string,
  quick: boolean,
): Promise<Figures> {
  const n = sizeOf(id, quick);
  const spec = SPECS[id];
  const runner = await start(id, variant);
  try {
    const c = spec.checker(n);
    const t0 = performance.now();
    await runner.run(n, spec.task, c.check);
    c.done();
    const seconds = (performance.now() - t0) / 1000;
    const figures: Figures = { n, seconds, itemsPerSec: n / seconds };
    if (spec.bytes > 0) figures.mbPerSec = n * spec.bytes / 1e6 / seconds;
    return figures;
  } finally {
    await runner.close();
  }
}

/** W3: the same N tasks with 1 worker, then 2; speedup t1/t2 and efficiency. */
async function w3(variant: string, quick: boolean): Promise<Figures> {
  const n = sizeOf("W3", quick);
  const figures: Figures = { n };
  for (const workers of [1, 2]) {
    const spec = w3Spec(workers);
    const runner = await start("W3", variant, workers);
    try {
      const c = w.w3Checker(n);
      const t0 = performance.now();
      await runner.run(n, spec.task, c.check);
      const taskMs = c.done();
      const wallMs = performance.now() - t0;
      figures[`wallMs${workers}`] = wallMs;
      figures[`taskMs${workers}`] = taskMs / n;
      figures[`efficiency${workers}`] = taskMs / (workers * wallMs);
    } finally {
      await runner.close();
    }
  }
  figures.speedup = figures.wallMs1! / figures.wallMs2!;
  figures.itemsPerSec2 = n / (figures.wallMs2! / 1000);
  return figures;
}

/** W6: N round trips after the warm-up; nearest-rank p50 and p99 in µs. */
async function w6(variant: string, quick: boolean): Promise<Figures> {
  const n = sizeOf("W6", quick);
  const runner = await start("W6", variant);
  try {
    const us = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      w.w6Check(i, await runner.roundTrip(w.w6Task(i)));
      us[i] = (performance.now() - t0) * 1000;
    }
    us.sort();
    const rank = (q: number) => us[Math.max(0, Math.ceil(q * n) - 1)]!;
    return {
      n,
      p50: rank(0.5),
      p99: rank(0.99),
      mean: us.reduce((a, b) => a + b) / n,
    };
  } finally {
    await runner.close();
  }
}

/** Start-up: MPipe's `new Pipeline` of a 4-worker stage until its first result, or 4 bare Workers answering a ping. */
async function startup(variant: string): Promise<Figures> {
  if (variant === "mpipe") {
    const t0 = performance.now();
    const pipe = new Pipeline<number, number>(
      new OrderedStage(w.w1Increment, STARTUP_WORKERS),
    );
    await pipe.put(0);
    const first = await pipe.get();
    const ms = performance.now() - t0;
    if (first !== 1) throw new Error(`start-up: expected 1, got ${first}`);
    await pipe.put(null);
    if (await pipe.get() !== null) throw new Error("start-up: extra result");
    await pipe.done;
    return { ms };
  }
  const t0 = performance.now();
  const url = URL.createObjectURL(
    new Blob(["self.onmessage = (e) => self.postMessage(e.data);"], {
      type: "text/javascript",
    }),
  );
  const workers = Array.from(
    { length: STARTUP_WORKERS },
    () => new Worker(url, { type: "module" }),
  );
  await Promise.all(
    workers.map((worker, i) =>
      new Promise<void>((resolve, reject) => {
        worker.onmessage = (e) =>
          e.data === i ? resolve() : reject(new Error("start-up: bad pong"));
        worker.onerror = (e) => {
          e.preventDefault();
          reject(new Error(`start-up: ${e.message}`));
        };
        worker.postMessage(i);
      })
    ),
  );
  const ms = performance.now() - t0;
  for (const worker of workers) worker.terminate();
  URL.revokeObjectURL(url);
  return { ms };
}

/** Idle: a built and warmed-up 2-stage pipeline of 2 + 2 workers, left waiting 2 s. */
async function idle(variant: string): Promise<Figures> {
  const stages = [
    { fn: w.w1Increment, workers: 2, ordered: true },
    { fn: w.w1Double, workers: 2, ordered: true },
  ];
  const spec = { ...SPECS.W1, stages };
  const measure = async () => {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await new Promise((resolve) => setTimeout(resolve, IDLE_MS));
    const cpu = process.cpuUsage(cpu0);
    const wallUs = (performance.now() - t0) * 1000;
    return { cpu: (cpu.user + cpu.system) / wallUs, wallMs: wallUs / 1000 };
  };
  if (variant === "mpipe") {
    const runner = await MPipeRunner.start(stages, { id: "W1", spec });
    // A consumer waiting for the next result, as in an application between bursts.
    const waiting = runner.pipe.get();
    waiting.catch(() => {}); // a failure is reported when it is awaited below
    const figures = await measure();
    await runner.pipe.put(null);
    if (await waiting !== null) throw new Error("idle: unexpected result");
    await runner.pipe.done;
    runner.terminate(); // already ended: this only stops the runner's watchdog
    return figures;
  }
  const p = await PostMessagePipeline.start(stages, {});
  try {
    const c = spec.checker(w.WARMUP.W1);
    await p.run(w.WARMUP.W1, spec.task, c.check);
    return await measure();
  } finally {
    p.close();
  }
}

async function measureOne(
  what: Case,
  variant: string,
  quick: boolean,
): Promise<Figures> {
  if (!VARIANTS[what]?.includes(variant)) {
    throw new Error(
      `unknown measurement ${what} ${variant}; known: ${
        CASES.map((c) => `${c} ${VARIANTS[c].join("|")}`).join(", ")
      }`,
    );
  }
  switch (what) {
    case "W3":
      return await w3(variant, quick);
    case "W6":
      return await w6(variant, quick);
    case "startup":
      return await startup(variant);
    case "idle":
      return await idle(variant);
    default:
      return await throughput(what, variant, quick);
  }
}

// ================================================================ parent: rounds and table

interface Options {
  rounds: number;
  quick: boolean;
  only: Case[];
  timeoutS: number;
}

function parseArgs(args: string[]): Options & { one?: [Case, string] } {
  const o: Options & { one?: [Case, string] } = {
    rounds: 3,
    quick: false,
    only: [...CASES],
    timeoutS: 300,
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = () => {
      const v = args[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--quick") o.quick = true;
    else if (a === "--rounds") o.rounds = Math.max(1, parseInt(value(), 10));
    else if (a === "--timeout") o.timeoutS = Number(value());
    else if (a === "--only") {
      o.only = value().split(",").map((s) => {
        const c = CASES.find((x) => x.toLowerCase() === s.trim().toLowerCase());
        if (c === undefined) throw new Error(`--only: unknown case ${s}`);
        return c;
      });
    } else if (a === "--one") o.one = [value() as Case, value()];
    else {
      throw new Error(
        `unknown argument ${a}; usage: compare.ts [--rounds N] [--quick] [--only W1,W4,...] [--timeout SECONDS]`,
      );
    }
  }
  if (!Number.isFinite(o.rounds)) throw new Error("--rounds: a number");
  return o;
}

type Outcome = { ok: true; figures: Figures } | { ok: false; error: string };

async function runChild(
  what: Case,
  variant: string,
  o: Options,
): Promise<Outcome> {
  const args = [
    "run",
    "--allow-read",
    import.meta.filename ?? new URL(import.meta.url).pathname,
    "--one",
    what,
    variant,
  ];
  if (o.quick) args.push("--quick");
  const child = new Deno.Command(Deno.execPath(), {
    args,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, o.timeoutS * 1000);
  const out = await child.output();
  clearTimeout(timer);
  const stdout = new TextDecoder().decode(out.stdout);
  // The head of the child's stderr: the error message and the top of its stack.
  const stderr = new TextDecoder().decode(out.stderr)
    // deno-lint-ignore no-control-regex
    .replace(/\x1b\[[0-9;]*m/g, "")
    .split("\n").filter((l) => l.trim() !== "").slice(0, 4).join("\n");
  if (timedOut) {
    return {
      ok: false,
      error: `timed out after ${o.timeoutS} s (killed)${
        stderr ? ": " + stderr : ""
      }`,
    };
  }
  const line = stdout.trim().split("\n").filter((l) => l.startsWith("{"))
    .pop();
  if (!out.success || line === undefined) {
    return {
      ok: false,
      error: `exit code ${out.code}: ${stderr || stdout.slice(-500)}`,
    };
  }
  return { ok: true, figures: JSON.parse(line) as Figures };
}

function median(values: number[]): number | undefined {
  if (values.length === 0) return undefined;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1]! + s[m]!) / 2;
}

function summary(f: Figures, what: Case): string {
  const n = (x: number | undefined, d = 0) =>
    x === undefined ? "?" : x.toLocaleString("en", {
      maximumFractionDigits: d,
      minimumFractionDigits: d,
    });
  switch (what) {
    case "W3":
      return `speedup ${n(f.speedup, 2)}, efficiency ${n(f.efficiency2, 2)}`;
    case "W4":
      return `${n(f.mbPerSec)} MB/s`;
    case "W6":
      return `p50 ${n(f.p50, 1)} µs, p99 ${n(f.p99, 1)} µs`;
    case "startup":
      return `${n(f.ms, 1)} ms`;
    case "idle":
      return `${n(f.cpu, 4)} of a core`;
    default:
      return `${n(f.itemsPerSec)} items/s`;
  }
}

/** The 1-minute load average (other work on the machine skews every figure), or "?". */
async function loadAverage(): Promise<string> {
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

async function machine(): Promise<string> {
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

type Results = Map<string, Figures[]>; // key: `${case} ${variant}`

function table(results: Results, o: Options): string {
  const get = (what: Case, variant: string, key: string) =>
    median(
      (results.get(`${what} ${variant}`) ?? []).map((f) => f[key]).filter((
        x,
      ): x is number => typeof x === "number"),
    );
  const fmt = (x: number | undefined, digits: number) =>
    x === undefined ? "failed" : x.toLocaleString("en", {
      maximumFractionDigits: digits,
      minimumFractionDigits: digits,
    });
  const ratio = (a: number | undefined, b: number | undefined) =>
    a === undefined || b === undefined || b === 0
      ? "—"
      : `${(a / b).toFixed(2)}×`;
  const rows: string[] = [
    "| workload | figure | postMessage (simple) | postMessage batch 256 / transfer | MPipe | MPipe ÷ simple | MPipe ÷ batch/transfer |",
    "|---|---|--:|--:|--:|--:|--:|",
  ];
  const row = (
    what: Case,
    label: string,
    figure: string,
    key: string,
    digits: number,
    base = "pm",
  ) => {
    if (!o.only.includes(what)) return;
    const second = VARIANTS[what].find((v) => v !== base && v !== "mpipe");
    const simple = get(what, base, key);
    const other = second === undefined ? undefined : get(what, second, key);
    const mpipe = get(what, "mpipe", key);
    rows.push(
      `| ${label} | ${figure} | ${fmt(simple, digits)} | ${
        second === undefined ? "—" : fmt(other, digits)
      } | ${fmt(mpipe, digits)} | ${ratio(mpipe, simple)} | ${
        second === undefined ? "—" : ratio(mpipe, other)
      } |`,
    );
  };
  const n = (id: WorkloadId) => sizeOf(id, o.quick).toLocaleString("en");
  row(
    "W1",
    `W1 2 ordered stages ×1 (N ${n("W1")})`,
    "items/s ↑",
    "itemsPerSec",
    0,
  );
  row(
    "W2",
    `W2 2 unordered stages ×2 (N ${n("W2")})`,
    "items/s ↑",
    "itemsPerSec",
    0,
  );
  row(
    "W3",
    `W3 ~1 ms tasks, 1 vs 2 workers (N ${n("W3")})`,
    "speedup t₁/t₂ ↑",
    "speedup",
    2,
  );
  row("W3", "W3", "efficiency, 2 workers ↑", "efficiency2", 2);
  row("W3", "W3", "efficiency, 1 worker ↑", "efficiency1", 2);
  row("W3", "W3", "items/s, 2 workers ↑", "itemsPerSec2", 0);
  row("W4", `W4 64 KiB identity (N ${n("W4")})`, "MB/s ↑", "mbPerSec", 0);
  row(
    "W5",
    `W5 3 ordered stages, objects (N ${n("W5")})`,
    "items/s ↑",
    "itemsPerSec",
    0,
  );
  row("W6", `W6 round trip (N ${n("W6")})`, "p50 µs ↓", "p50", 1);
  row("W6", "W6", "p99 µs ↓", "p99", 1);
  row(
    "startup",
    `start-up, ${STARTUP_WORKERS} workers (baseline: bare Workers + ping)`,
    "ms ↓",
    "ms",
    1,
    "workers",
  );
  row(
    "idle",
    "idle, 2 stages × 2 workers, 2 s",
    "CPU, fraction of one core ↓",
    "cpu",
    4,
  );
  return rows.join("\n");
}

async function parent(o: Options): Promise<void> {
  const info = await machine();
  const loadBefore = await loadAverage();
  console.error(`Machine: ${info}`);
  console.error(
    `${o.rounds} round(s), ${o.quick ? "quick (N / 10)" : "full N"}, cases: ${
      o.only.join(", ")
    }`,
  );
  const results: Results = new Map();
  const failures: string[] = [];
  const started = performance.now();
  for (let round = 0; round < o.rounds; round++) {
    for (const what of o.only) {
      // Alternate: baselines first in even rounds, MPipe first in odd ones, with MPipe
      // between the two baselines, so neither side always runs on a warmer machine.
      const [simple, ...rest] = VARIANTS[what];
      const mpipe = rest.pop()!;
      const order = round % 2 === 0
        ? [simple!, mpipe, ...rest]
        : [...rest, mpipe, simple!];
      for (const variant of order) {
        const t0 = performance.now();
        const outcome = await runChild(what, variant, o);
        const s = ((performance.now() - t0) / 1000).toFixed(1);
        const tag = `[round ${round + 1}/${o.rounds}] ${what} ${variant}`;
        if (outcome.ok) {
          const key = `${what} ${variant}`;
          if (!results.has(key)) results.set(key, []);
          results.get(key)!.push(outcome.figures);
          console.error(`${tag}: ${summary(outcome.figures, what)} (${s} s)`);
        } else {
          failures.push(`${tag}: ${outcome.error}`);
          console.error(`${tag}: FAILED, skipped: ${outcome.error}`);
        }
      }
    }
  }
  const total = ((performance.now() - started) / 1000).toFixed(0);
  console.log(
    `## MPipe vs postMessage — medians of ${o.rounds} fresh process(es) per cell\n`,
  );
  console.log(`Machine: ${info}  `);
  console.log(
    `Mode: ${
      o.quick ? "quick (N / 10)" : "full N (BENCHMARKS.md)"
    }; warm-up as BENCHMARKS.md; ↑ higher is better, ↓ lower is better; ratios are MPipe ÷ baseline medians; ${total} s in all; load average ${loadBefore} before, ${await loadAverage()} after.\n`,
  );
  console.log(table(results, o));
  if (failures.length > 0) {
    console.log(`\nFailed measurements (left out of the medians):\n`);
    for (const f of failures) {
      console.log(`- ${f.replaceAll("\n", " ⏎ ").slice(0, 800)}`);
    }
  }
}

if (import.meta.main) {
  const o = parseArgs(Deno.args);
  if (o.one !== undefined) {
    const [what, variant] = o.one;
    try {
      const figures = await measureOne(what, variant, o.quick);
      console.log(JSON.stringify({ case: what, variant, ...figures }));
    } catch (e) {
      console.error(
        `${what} ${variant} failed: ${e instanceof Error ? e.stack : e}`,
      );
      Deno.exit(1); // a failed pipeline's workers may keep the process alive
    }
    // Every pipeline was closed; exit regardless, as a stuck worker would keep us here.
    Deno.exit(0);
  } else {
    await parent(o);
  }
}
