// One measurement of /work/shared/BENCHMARKS.md in a fresh process, printed as one JSON line
// on stdout (see `Figures` in cases.ts); the child of bench/compare.ts and bench/ab.ts.
//
//   deno run --allow-read bench/measure.ts <case> <variant> [--quick] [--lib PATH/mod.ts]
//                                          [--progress] [--dashboard | --dashboard-stream]
//                                          [--settle MS]
//
// <case> is W1–W6 (and W4L, W4 with 4 MiB tasks), startup or idle; <variant> one of VARIANTS
// in cases.ts (mpipe, mpipe-ref: W4 and W4L by reference on the arena, pm,
// pm-batch, pm-transfer, workers). `--quick` runs N / 10 per pass. `--lib` builds the MPipe
// side with another checkout's library (bench/ab.ts passes an exported commit's mod.ts);
// every other line of code, the workloads and the baselines included, is this checkout's.
// `--progress` turns on MPipe's progress display (PipelineOptions.progress) on stderr for
// the pipelines of W1–W6 (not start-up or idle, which it would skew); it reads shared
// memory on a timer, so its figures are for watching a run, not for the table.
// `--dashboard` serves the dashboard (`@mpipe/mpipe/dashboard`) of the throughput
// workloads' pipeline and opens its page in the headless Chromium for the timed passes
// (bench/dashboard_watch.ts; needs -A), `--dashboard-stream` has curl read its event stream
// without drawing it: the A/B of bench/dashboard_ab.ts. `--settle MS`
// waits until MS after the warm-up before the first timed pass (the browser's start
// included), so that both sides of that A/B pause alike.
//
// Throughput workloads (W1, W2, W4, W4L, W5) run 6 timed passes of N through one pipeline after
// the warm-up, each timed from just before its first put until its last result is read and
// checked: the first pass and the steady state (median of passes 2–6) come out.

import process from "node:process";
import {
  type Case,
  CASES,
  type Figures,
  IDLE_MS,
  PASSES,
  sizeOf,
  STARTUP_WORKERS,
  VARIANTS,
} from "./cases.ts";
import {
  type BaselineVariant,
  type Library,
  loadLibrary,
  MPipeRunner,
  type Runner,
  SPECS,
  startMPipe,
  startPostMessage,
  w3Spec,
  type WorkloadId,
} from "./mpipe_runner.ts";
import { PostMessagePipeline } from "./postmessage_pipeline.ts";
import { median } from "./stats.ts";
import * as w from "./workloads.ts";

/** What the child was asked to measure. */
interface Request {
  what: Case;
  variant: string;
  quick: boolean;
  /** The library for the MPipe side. */
  library: Library;
  /** Where it came from: `--lib`'s path, or undefined for this checkout's mod.ts. */
  libPath: string | undefined;
  /** Show MPipe's progress display on stderr (`--progress`). */
  progress: boolean;
  /** Watch the pipeline's dashboard: in the headless Chromium (`--dashboard`), or its event stream with curl (`--dashboard-stream`). */
  dashboard: "browser" | "stream" | null;
  /** Ms from the end of the warm-up to the first timed pass, at least (`--settle`). */
  settleMs: number;
}

function start(
  r: Request,
  id: WorkloadId,
  w3Workers?: number,
): Promise<Runner & { close(): unknown }> {
  if (r.variant === "mpipe") {
    return startMPipe(id, {
      w3Workers,
      library: r.library,
      ...(r.progress ? { pipeline: { progress: true } } : {}),
    });
  }
  if (r.variant === "mpipe-ref" && (id === "W4" || id === "W4L")) {
    // By reference: tasks on the arena, room for 4 × the baseline's in-flight bytes.
    const bytes = SPECS[id].bytes;
    return startMPipe(id, {
      library: r.library,
      pipeline: {
        arenaBytes: 4 * SPECS[id].maxInFlight * bytes,
        ...(r.progress ? { progress: true } : {}),
      },
      byReference: { bytes, fill: w.w4Fill },
    });
  }
  const pm: Record<string, BaselineVariant> = {
    "pm": "simple",
    "pm-batch": "batch",
    "pm-transfer": "transfer",
  };
  const v = pm[r.variant];
  if (v === undefined) throw new Error(`unknown variant ${r.variant} of ${id}`);
  return startPostMessage(id, v, { w3Workers });
}

/** PASSES timed passes of N through one warmed-up pipeline: every pass, first, steady. */
async function throughput(r: Request, id: WorkloadId): Promise<Figures> {
  const n = sizeOf(id, r.quick);
  const spec = SPECS[id];
  const runner = await start(r, id);
  const seconds: number[] = [];
  const warm = performance.now();
  const watch = r.dashboard !== null && runner instanceof MPipeRunner
    ? await (await import("./dashboard_watch.ts")).watch(
      runner.pipe,
      r.dashboard,
    )
    : null;
  // The same pause after the warm-up on both sides of an A/B (a pause alone
  // changes the steady state here several times over).
  const pause = r.settleMs - (performance.now() - warm);
  if (pause > 0) await new Promise((resolve) => setTimeout(resolve, pause));
  try {
    for (let pass = 0; pass < PASSES; pass++) {
      const c = spec.checker(n);
      const t0 = performance.now();
      await runner.run(n, spec.task, c.check);
      c.done();
      seconds.push((performance.now() - t0) / 1000);
    }
  } finally {
    await watch?.close();
    await runner.close();
  }
  const perPass = seconds.map((s) =>
    spec.bytes > 0 ? n * spec.bytes / 1e6 / s : n / s
  );
  return {
    n,
    unit: spec.bytes > 0 ? "MB/s" : "items/s",
    perPass,
    seconds,
    first: perPass[0]!,
    steady: median(perPass.slice(1))!,
  };
}

/** W3: the same N tasks with 1 worker, then 2; speedup t1/t2 and efficiency. */
async function w3(r: Request): Promise<Figures> {
  const n = sizeOf("W3", r.quick);
  const figures: Record<string, number> = { n };
  for (const workers of [1, 2]) {
    const spec = w3Spec(workers);
    const runner = await start(r, "W3", workers);
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
async function w6(r: Request): Promise<Figures> {
  const n = sizeOf("W6", r.quick);
  const runner = await start(r, "W6");
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
async function startup(r: Request): Promise<Figures> {
  if (r.variant === "mpipe") {
    const { OrderedStage, Pipeline } = r.library; // imported before the clock starts
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
async function idle(r: Request): Promise<Figures> {
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
  if (r.variant === "mpipe") {
    const runner = await MPipeRunner.start(stages, { id: "W1", spec }, {
      library: r.library,
    });
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

function measure(r: Request): Promise<Figures> {
  switch (r.what) {
    case "W3":
      return w3(r);
    case "W6":
      return w6(r);
    case "startup":
      return startup(r);
    case "idle":
      return idle(r);
    default:
      return throughput(r, r.what);
  }
}

const USAGE =
  "usage: measure.ts <case> <variant> [--quick] [--lib PATH/mod.ts] [--progress] [--dashboard | --dashboard-stream] [--settle MS]";

async function parseArgs(args: string[]): Promise<Request> {
  const positional: string[] = [];
  let quick = false;
  let progress = false;
  let dashboard: Request["dashboard"] = null;
  let settleMs = 0;
  let lib: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--quick") quick = true;
    else if (a === "--progress") progress = true;
    else if (a === "--dashboard") dashboard = "browser";
    else if (a === "--dashboard-stream") dashboard = "stream";
    else if (a === "--settle") {
      settleMs = Number(args[++i]);
      if (!(settleMs >= 0)) {
        throw new TypeError(`--settle needs a number of ms; ${USAGE}`);
      }
    } else if (a === "--lib") {
      lib = args[++i];
      if (lib === undefined) {
        throw new TypeError(`--lib needs a path; ${USAGE}`);
      }
    } else if (a.startsWith("--")) {
      throw new TypeError(`unknown option ${a}; ${USAGE}`);
    } else positional.push(a);
  }
  const [what, variant] = positional as [Case, string];
  if (
    positional.length !== 2 || !CASES.includes(what) ||
    !VARIANTS[what].includes(variant)
  ) {
    throw new RangeError(
      `unknown measurement '${positional.join(" ")}'; known: ${
        CASES.map((c) => `${c} ${VARIANTS[c].join("|")}`).join(", ")
      }; ${USAGE}`,
    );
  }
  return {
    what,
    variant,
    quick,
    library: await loadLibrary(lib),
    libPath: lib,
    progress,
    dashboard,
    settleMs,
  };
}

if (import.meta.main) {
  let tag = Deno.args.slice(0, 2).join(" ");
  try {
    const r = await parseArgs(Deno.args);
    tag = `${r.what} ${r.variant}`;
    const figures = await measure(r);
    console.log(
      JSON.stringify({
        case: r.what,
        variant: r.variant,
        ...figures,
        ...(r.libPath === undefined ? {} : { lib: r.libPath }),
      }),
    );
  } catch (e) {
    console.error(`${tag} failed: ${e instanceof Error ? e.stack : e}`);
    Deno.exit(1); // a failed pipeline's workers may keep the process alive
  }
  // Every pipeline was closed; exit regardless, as a stuck worker would keep us here.
  Deno.exit(0);
}
