// Elastic stages against fixed sizes (issue 27), each figure the median of fresh processes
// run in alternation (config A, config B, config A, …), so that a drift of the machine hits
// every config alike.
//
//   deno task bench:elastic [--runs 5] [--threads <cores>] [--n 8000] [--heavy 8] [--only costs,shift,idle,cost]
//
// 1. costs: a chain of 3 ordered stages whose middle step costs `--heavy` (8) × the others (CPU in a busy
//    loop, `--unit` iterations for the cheap steps, about 0.1 ms); the elastic pipeline (each stage
//    { min: 1, max: threads }, `threads` set to the cores) against every fixed allocation of
//    up to threads + 2 workers. Target: elastic ≥ 0.90 × the best fixed.
// 2. shift: the same chain, but halfway through the expensive step moves from stage 2 to
//    stage 3; the elastic pipeline against the best fixed allocation of the first half (the
//    best of `costs` for that chain). Target: elastic ≥ 1.2 × it over the whole run.
// 3. idle: after the input stops, how long until every elastic stage is back at its min
//    (idleMs 500), and whether a stage of min 0 then holds no worker. Target: within
//    idleMs + 1 s, and no worker.
// 4. cost: W1 and W5 (even, cheap load) with every stage elastic ({ min: 1, max: threads })
//    against the same stages fixed at 1 worker. Target: ≥ 0.95 ×.
//
//    On 2 cores with an 8× step, the fixed chain's second half is only ~1.4× slower than its
//    first (its lone stage-3 worker has a core to itself), so even a control that reacted at
//    once could reach only (1 + 1.4) / 2 ≈ 1.2 ×: `--heavy 16` leaves the control room to show.
//
// A child (`--one <case> <config> <n> <threads> <unit> <heavy>`) prints one JSON line.

import { OrderedStage, Pipeline, type Stage } from "../mod.ts";
import { machine, runChild, timestamp } from "./harness.ts";
import { median } from "./stats.ts";
import {
  w1Check,
  w1Double,
  w1Increment,
  w1Task,
  w5AddA,
  w5AddB,
  w5AddC,
  w5Check,
  w5Task,
} from "./workloads.ts";

const CASES = ["costs", "shift", "idle", "cost"] as const;
type Case = typeof CASES[number];

/** What one child measured. */
interface Run {
  /** Tasks per second, from the first put to the last result. */
  rate: number;
  /** idle: ms from the last result until every elastic stage was at its min (-1: never, within 10 s). */
  settleMs?: number;
  /** idle: the min-0 stage held no worker once settled. */
  noWorker?: boolean;
  /** Each stage's highest size, for elastic configs. */
  highest?: number[];
}

/** A chain task: its id, and each stage's cost in loop iterations. */
interface Task {
  id: number;
  costs: [number, number, number];
  /** What the loops computed (so that they are not optimized away). */
  x: number;
}

/**
 * Stage `k` of the chain: a loop of the task's cost `k` iterations, shipped by source. CPU
 * work, not a wait for the clock: with more threads than cores, a thread that waits for the
 * clock would finish its "work" while descheduled.
 */
function step(k: number) {
  return new Function(
    "task",
    `let x = task.x;
     for (let i = task.costs[${k}]; i > 0; i--) x = (x * 31 + i) | 0;
     task.x = x;
     return task;`,
  ) as (task: Task) => Task;
}

/** The three-stage chain, sized `sizes` ("elastic": each { min: 1, max: threads }). */
function chain(
  sizes: number[] | "elastic",
  threads: number,
): Pipeline<Task, Task> {
  const stages = [0, 1, 2].map((k) =>
    new OrderedStage(
      step(k),
      sizes === "elastic" ? { min: 1, max: threads } : sizes[k]!,
      { name: `s${k + 1}`, maxBacklog: 256 },
    )
  );
  stages[0]!.link(stages[1]!.link(stages[2]!));
  return new Pipeline<Task, Task>(stages[0] as Stage<Task, Task>, { threads });
}

/** Feeds `tasks` and checks that they come back in order; returns tasks per second. */
async function drive(
  pipe: Pipeline<Task, Task>,
  tasks: Task[],
): Promise<number> {
  const t0 = performance.now();
  const feeding = pipe.feed(tasks);
  let k = 0;
  for await (const result of pipe) {
    if (result.id !== k) throw new Error(`result ${k} was task ${result.id}`);
    k++;
  }
  await feeding;
  const ms = performance.now() - t0;
  if (k !== tasks.length) throw new Error(`${k} results of ${tasks.length}`);
  return tasks.length / (ms / 1000);
}

async function one(
  which: Case,
  config: string,
  n: number,
  threads: number,
  unit: number,
  heavy: number,
): Promise<Run> {
  const sizes = config === "elastic"
    ? "elastic" as const
    : config.split(",").map(Number);
  if (which === "costs" || which === "shift") {
    const pipe = chain(sizes, threads);
    const tasks = Array.from({ length: n }, (_, id): Task => ({
      id,
      costs: which === "shift" && id >= n / 2
        ? [unit, unit, heavy * unit]
        : [unit, heavy * unit, unit],
      x: 0,
    }));
    const rate = await drive(pipe, tasks);
    await pipe.done;
    if (Deno.env.get("MPIPE_BENCH_DEBUG")) console.error(pipe.insights());
    return { rate, highest: pipe.stats().stages.map((s) => s.highestSize) };
  }
  if (which === "idle") {
    const idleMs = 500;
    const stages = [
      new OrderedStage(step(0), { min: 1, max: threads }, { idleMs }),
      new OrderedStage(step(1), { min: 1, max: threads }, { idleMs }),
      new OrderedStage(step(2), { min: 0, max: threads }, { idleMs }),
    ];
    stages[0]!.link(stages[1]!.link(stages[2]!));
    const pipe = new Pipeline<Task, Task>(stages[0] as Stage<Task, Task>, {
      threads,
    });
    const tasks = Array.from({ length: n }, (_, id): Task => ({
      id,
      costs: [unit, heavy * unit, heavy * unit],
      x: 0,
    }));
    const t0 = performance.now();
    const reading = (async () => {
      let k = 0;
      for await (const _ of pipe) if (++k === n) return;
    })();
    await pipe.feed(tasks, { close: false });
    await reading;
    const rate = n / ((performance.now() - t0) / 1000);
    const last = performance.now();
    const mins = [1, 1, 0];
    let settleMs = -1;
    while (performance.now() - last < 10_000) {
      const stats = pipe.stats();
      if (stats.stages.every((s, i) => s.size === mins[i])) {
        settleMs = performance.now() - last;
        break;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    const stats = pipe.stats();
    const noWorker = stats.stages[2]!.size === 0 &&
      stats.stages[2]!.workers.every((w) =>
        w.spans.every((s) => s.endMs !== null)
      );
    const highest = stats.stages.map((s) => s.highestSize);
    await pipe.close();
    await pipe.done;
    return { rate, settleMs, noWorker, highest };
  }
  // cost: W1 (2 stages) and W5 (3 stages), tasks put and results read as compare.ts does.
  const [workload, mode] = config.split(":") as [
    "W1" | "W5",
    "fixed" | "elastic",
  ];
  const size = mode === "elastic" ? { min: 1, max: threads } : 1;
  if (workload === "W1") {
    const pipe = new Pipeline<number, number>(
      new OrderedStage(w1Increment, size).link(
        new OrderedStage(w1Double, size),
      ),
      { threads },
    );
    const t0 = performance.now();
    const feeding = pipe.feed((function* () {
      for (let i = 0; i < n; i++) yield w1Task(i);
    })());
    let k = 0;
    for await (const result of pipe) w1Check(k++, result);
    await feeding;
    const rate = n / ((performance.now() - t0) / 1000);
    await pipe.done;
    return { rate, highest: pipe.stats().stages.map((s) => s.highestSize) };
  }
  const pipe = new Pipeline(
    new OrderedStage(w5AddA, size).link(
      new OrderedStage(w5AddB, size).link(new OrderedStage(w5AddC, size)),
    ),
    { threads },
  );
  const t0 = performance.now();
  const feeding = pipe.feed((function* () {
    for (let i = 0; i < n; i++) yield w5Task(i);
  })());
  let k = 0;
  for await (const result of pipe) w5Check(k++, result);
  await feeding;
  const rate = n / ((performance.now() - t0) / 1000);
  await pipe.done;
  return { rate, highest: pipe.stats().stages.map((s) => s.highestSize) };
}

function flag(name: string): string | undefined {
  const at = Deno.args.indexOf(name);
  return at < 0 ? undefined : Deno.args[at + 1];
}

/** Every allocation of 1 or more workers to each of 3 stages, `most` workers at most. */
function allocations(most: number): string[] {
  const found: string[] = [];
  for (let a = 1; a <= most; a++) {
    for (let b = 1; a + b <= most; b++) {
      for (let c = 1; a + b + c <= most; c++) found.push(`${a},${b},${c}`);
    }
  }
  return found;
}

if (Deno.args[0] === "--one") {
  const [, which, config, n, threads, unit, heavy] = Deno.args;
  console.log(
    JSON.stringify(
      await one(
        which as Case,
        config!,
        Number(n),
        Number(threads),
        Number(unit),
        Number(heavy),
      ),
    ),
  );
  Deno.exit(0);
}

const runs = Number(flag("--runs") ?? 5);
const threads = Number(flag("--threads") ?? navigator.hardwareConcurrency);
const n = Number(flag("--n") ?? 8000);
const unit = Number(flag("--unit") ?? 20_000);
const heavy = Number(flag("--heavy") ?? 8);
const only = (flag("--only")?.split(",") ?? CASES) as Case[];
const script = new URL(import.meta.url).pathname;

/** Runs `configs` of `which` `runs` times each, in alternation; the median run of each. */
async function measure(
  which: Case,
  configs: string[],
  count: number,
): Promise<Map<string, { rate: number; runs: Run[] }>> {
  const found = new Map<string, Run[]>(configs.map((c) => [c, []]));
  for (let round = 0; round < runs; round++) {
    for (const config of configs) {
      const outcome = await runChild({
        script,
        args: [
          "--one",
          which,
          config,
          String(count),
          String(threads),
          String(unit),
          String(heavy),
        ],
        permissions: ["--allow-read", "--allow-env"],
        timeoutS: 600,
      });
      if (!outcome.ok) throw new Error(`${which} ${config}: ${outcome.error}`);
      found.get(config)!.push(outcome.figures as unknown as Run);
    }
  }
  return new Map(
    [...found].map(([config, list]) => [
      config,
      { rate: median(list.map((r) => r.rate))!, runs: list },
    ]),
  );
}

const rate = (x: number) => `${Math.round(x).toLocaleString("en-US")}/s`;
console.log(
  `# bench:elastic ${timestamp()}\n\n${await machine()}\n\nthreads ${threads}, ${runs} runs each (medians), ${n} tasks, unit ${unit} iterations, heavy step ${heavy}×\n`,
);

let bestFirstHalf = "1,2,1";
if (only.includes("costs") || only.includes("shift")) {
  const fixed = allocations(threads + 2);
  const results = await measure("costs", [...fixed, "elastic"], n);
  const best = fixed.reduce((a, b) =>
    results.get(a)!.rate >= results.get(b)!.rate ? a : b
  );
  bestFirstHalf = best;
  if (only.includes("costs")) {
    console.log(`## 1. costs: 3 stages, the middle ${heavy}× the others\n`);
    console.log("| sizes | tasks/s | highest sizes |\n| --- | ---: | --- |");
    for (const [config, { rate: r, runs: list }] of results) {
      console.log(
        `| ${config}${config === best ? " (best fixed)" : ""} | ${rate(r)} | ${
          list[0]?.highest?.join(",") ?? ""
        } |`,
      );
    }
    const ratio = results.get("elastic")!.rate / results.get(best)!.rate;
    console.log(
      `\nelastic / best fixed (${best}) = ${
        ratio.toFixed(2)
      } (target ≥ 0.90): ${ratio >= 0.9 ? "met" : "NOT met"}\n`,
    );
  }
}
if (only.includes("shift")) {
  const results = await measure("shift", [bestFirstHalf, "elastic"], n);
  const ratio = results.get("elastic")!.rate / results.get(bestFirstHalf)!.rate;
  console.log(
    `## 2. shift: the expensive step moves from stage 2 to stage 3 halfway\n\n| sizes | tasks/s |\n| --- | ---: |\n| ${bestFirstHalf} (best of the first half) | ${
      rate(results.get(bestFirstHalf)!.rate)
    } |\n| elastic (highest sizes ${
      results.get("elastic")!.runs.map((r) => r.highest?.join(",")).join(" ")
    }) | ${rate(results.get("elastic")!.rate)} |\n\nelastic / fixed = ${
      ratio.toFixed(2)
    } (target ≥ 1.2): ${ratio >= 1.2 ? "met" : "NOT met"}\n`,
  );
}
if (only.includes("idle")) {
  const results = await measure("idle", ["elastic"], Math.min(n, 2000));
  const list = results.get("elastic")!.runs;
  const settle = median(list.map((r) => r.settleMs!))!;
  const worst = Math.max(...list.map((r) => r.settleMs!));
  const never = list.some((r) => r.settleMs! < 0);
  const held = list.filter((r) => !r.noWorker).length;
  console.log(
    `## 3. idle: back at min after the input stops (idleMs 500)\n\nmedian ${
      Math.round(settle)
    } ms, worst ${Math.round(worst)} ms (target ≤ 1,500 ms): ${
      !never && worst <= 1500 ? "met" : "NOT met"
    }; the min-0 stage held no worker in ${
      list.length - held
    } of ${list.length} runs (highest sizes ${list[0]?.highest?.join(",")})\n`,
  );
}
if (only.includes("cost")) {
  console.log(
    "## 4. cost: even load, every stage elastic against fixed at 1\n",
  );
  console.log(
    "| workload | fixed | elastic | elastic / fixed | elastic's highest sizes |\n| --- | ---: | ---: | ---: | --- |",
  );
  for (const [workload, count] of [["W1", 200_000], ["W5", 100_000]] as const) {
    const results = await measure(
      "cost",
      [`${workload}:fixed`, `${workload}:elastic`],
      count,
    );
    const fixed = results.get(`${workload}:fixed`)!.rate;
    const elastic = results.get(`${workload}:elastic`)!.rate;
    const sizes = results.get(`${workload}:elastic`)!.runs.map((r) =>
      r.highest?.join(",")
    ).join(" ");
    console.log(
      `| ${workload} | ${rate(fixed)} | ${rate(elastic)} | ${
        (elastic / fixed).toFixed(2)
      } (target ≥ 0.95: ${
        elastic / fixed >= 0.95 ? "met" : "NOT met"
      }) | ${sizes} |`,
    );
  }
}
