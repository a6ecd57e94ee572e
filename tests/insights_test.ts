import assert from "node:assert/strict";
import { OrderedStage, Pipeline, UnorderedStage } from "../mod.ts";
import { insightsReport } from "../lib/features/insights.ts";
import { fakeRun, fakeStage, fakeWorker } from "./support/fake_stats.ts";

// The report is a function of the statistics alone: most tests give it
// made-up ones, so that what it concludes does not depend on timing.

/** The line of `report` that starts with `start`. */
function lineOf(report: string, start: string): string {
  const line = report.split("\n").find((l) => l.startsWith(start));
  assert.ok(line !== undefined, `no line starts with ${start}:\n${report}`);
  return line;
}

// ---- the bottleneck ----

Deno.test("insights: the stage whose workers worked most of their time held the run back, with its figures", () => {
  const report = insightsReport(fakeRun([
    fakeStage("parse", [fakeWorker(20, 980)], { next: [1] }),
    fakeStage("slow", [fakeWorker(900, 50)], { next: [2], fullMs: 400 }),
    fakeStage("write", [fakeWorker(10, 990)]),
  ]));
  const bottleneck = lineOf(report, "Bottleneck:");
  assert.match(bottleneck, /^Bottleneck: stage 'slow' held the run back/);
  assert.match(bottleneck, /worked 95% of its time since ready/);
  assert.match(bottleneck, /900 ms of 950 ms/);
  assert.match(bottleneck, /the next busiest stage, 'parse', worked 2%/);
  assert.match(bottleneck, /'parse' waited 400 ms for room there/);
  assert.match(bottleneck, /More workers for it \(it has 1\)/);
});

Deno.test("insights: a stage whose workers mostly awaited (timers, I/O) held the run back: the advice is concurrency, not more workers", () => {
  const report = insightsReport(fakeRun([
    fakeStage("fetch", [fakeWorker(900, 50, 0, { awaitingMs: 880 })]),
  ]));
  const bottleneck = lineOf(report, "Bottleneck:");
  assert.match(bottleneck, /^Bottleneck: stage 'fetch' held the run back/);
  assert.match(bottleneck, /Most of that time \(98%\) its tasks were awaiting/);
  assert.match(bottleneck, /'concurrency' option/);
  assert.doesNotMatch(bottleneck, /More workers for it/);
  // The worker's row shows the awaiting time and its share.
  assert.match(lineOf(report, "  #0"), /900 ms\s+95%\s+880 ms\s+93%/);
});

Deno.test("insights: a real stage of async tasks that await a timer is seen awaiting, and advised concurrency", async () => {
  const pipe = new Pipeline<number, number>(
    new OrderedStage(
      async (x: number) => {
        await new Promise((resolve) => setTimeout(resolve, 2));
        return x;
      },
      1,
      { name: "sleepy" },
    ),
  );
  for (let i = 0; i < 50; i++) pipe.put(i);
  pipe.put(null);
  assert.equal((await Array.fromAsync(pipe)).length, 50);
  await pipe.done;
  const [worker] = pipe.stats().stages[0]!.workers;
  // A timer of 2 ms against a synchronous part of microseconds: a ratio,
  // not a speed.
  assert.ok(
    worker!.awaitingMs > 0.5 * (worker!.busyMs - worker!.blockedMs),
    JSON.stringify(worker),
  );
  const bottleneck = lineOf(pipe.insights(), "Bottleneck:");
  assert.match(bottleneck, /were awaiting \(timers, I\/O\)/);
});

Deno.test("insights: a run no stage kept busy was held back by its output when the last stages were blocked", () => {
  const report = insightsReport(fakeRun([
    fakeStage("a", [fakeWorker(100, 800)], { next: [1] }),
    fakeStage("b", [fakeWorker(100, 300, 500)]),
  ]));
  assert.match(
    lineOf(report, "Bottleneck:"),
    /no stage was busy most of its time \(the busiest, 'a', worked 11%\): its output/,
  );
});

Deno.test("insights: a run no stage kept busy, with nothing blocked, was held back by its input", () => {
  const report = insightsReport(fakeRun([
    fakeStage("a", [fakeWorker(100, 800)]),
  ], 10_000));
  assert.match(
    lineOf(report, "Bottleneck:"),
    /its input: tasks were put slower/,
  );
});

Deno.test("insights: a run that ended early says how, and what each stage dropped, with nothing in flight", () => {
  const stage = fakeStage("only", [fakeWorker(500, 500)], {
    received: 10,
    tasks: 7,
    dropped: 3,
  });
  for (
    const [end, said] of [
      ["failure", "(the run failed)"],
      ["terminate", "(the run was terminated)"],
    ] as const
  ) {
    const report = insightsReport(fakeRun([stage], 1000, { end }));
    assert.ok(lineOf(report, "MPipe insights:").endsWith(said), end);
    assert.match(
      lineOf(report, "Stage 1"),
      /10 tasks reached it, 7 done, 0 skipped, 7 results; 3 dropped when the run ended early$/,
    );
    assert.doesNotMatch(report, /in flight|goes on/);
  }
});

Deno.test("insights: a short run is said to be mostly start-up", () => {
  const report = insightsReport(fakeRun([
    fakeStage("a", [fakeWorker(1, 10, 0, { startMs: 80 })]),
  ], 100));
  assert.match(lineOf(report, "Bottleneck:"), /start-up/);
});

Deno.test("insights: a FilterStage's sub-pipelines are no bottleneck of the run", () => {
  const report = insightsReport(fakeRun([
    fakeStage("filter", [fakeWorker(600, 400)], { next: [] }),
    fakeStage("slow", [fakeWorker(990, 10)], { within: 0 }),
  ]));
  assert.match(
    lineOf(report, "Bottleneck:"),
    /^Bottleneck: stage 'filter' held/,
  );
  assert.match(report, /in the sub-pipeline of filter 'filter'/);
});

// ---- warnings ----

Deno.test("insights: warns of a stage blocked writing results while its input was full", () => {
  const report = insightsReport(fakeRun([
    fakeStage("quick", [fakeWorker(20, 60, 900)], { next: [1], fullMs: 300 }),
    fakeStage("slow", [fakeWorker(950, 30)], { fullMs: 800 }),
  ]));
  const warning = lineOf(report, "Warning:");
  assert.match(
    warning,
    /^Warning: stage 'quick': its worker was working only 2%/,
  );
  assert.match(warning, /put waited 300 ms for room there/);
  assert.match(warning, /blocked 92% of it writing results to 'slow'/);
  assert.equal(
    report.split("\n").filter((l) => l.startsWith("Warning")).length,
    1,
  );
});

Deno.test("insights: warns of workers idle while tasks wait at their input (live)", () => {
  const report = insightsReport(fakeRun(
    [
      fakeStage("merge", [fakeWorker(300, 700), fakeWorker(200, 800)], {
        backlog: 12,
      }),
    ],
    1000,
    { done: false },
  ));
  const warning = lineOf(report, "Warning:");
  assert.match(warning, /its workers were working only 25% of their time/);
  assert.match(warning, /12 tasks wait at its input now/);
  assert.match(warning, /idle 75% of it/);
  assert.match(report, /so far \(the run goes on\)/);
});

Deno.test("insights: no warning for workers that wait while nothing waits for them", () => {
  const report = insightsReport(fakeRun([
    fakeStage("a", [fakeWorker(10, 990)], { next: [1] }),
    fakeStage("b", [fakeWorker(10, 990, 0)], { fullMs: 0.5 }),
  ]));
  assert.equal(lineOf(report, "No warnings"), "No warnings.");
});

// ---- per stage and per worker ----

Deno.test("insights: a row per worker with its times and shares, and the stage's slowest tasks", () => {
  const report = insightsReport(fakeRun([
    fakeStage(
      "work",
      [
        fakeWorker(600, 400, 0, { tasks: 60, startMs: 50, initMs: 12 }),
        fakeWorker(300, 600, 100, { tasks: 40, restarts: 1, skipped: 2 }),
      ],
      {
        tasks: 100,
        skipped: 2,
        received: 102,
        slowest: [
          { task: 7, ms: 31, worker: 1 },
          { task: 3, ms: 12.5, worker: 0 },
        ],
      },
    ),
  ]));
  assert.match(
    lineOf(report, "Stage 1 "),
    /^Stage 1 'work' \(ordered, 2 workers\): 102 tasks reached it, 100 done, 2 skipped, 100 results$/,
  );
  const header = lineOf(report, "  worker");
  for (
    const column of [
      "start-up",
      "doInit",
      "working",
      "awaiting",
      "blocked",
      "waiting",
    ]
  ) {
    assert.ok(header.includes(column), header);
  }
  assert.match(
    lineOf(report, "  #0"),
    /50 ms\s+5%\s+12 ms\s+1%\s+600 ms\s+60%\s+0 ms\s+0%\s+0 ms\s+0%\s+400 ms\s+40%\s+60\s+0\s+0$/,
  );
  assert.match(
    lineOf(report, "  #1"),
    /300 ms\s+30%\s+0 ms\s+0%\s+100 ms\s+10%\s+600 ms\s+60%\s+40\s+2\s+1$/,
  );
  assert.equal(
    lineOf(report, "  slowest"),
    "  slowest tasks (by sequence number): 7 in 31 ms (worker #1), 3 in 13 ms (worker #0)",
  );
});

Deno.test("insights: stages of the same name are told apart by their position", () => {
  const report = insightsReport(fakeRun([
    fakeStage("step", [fakeWorker(900, 100)], { next: [1] }),
    fakeStage("step", [fakeWorker(10, 990)]),
  ]));
  assert.match(lineOf(report, "Bottleneck:"), /stage 'step' \(stage 1\) held/);
});

// ---- a real run ----

Deno.test("Pipeline.insights() reports every stage of a real run, and the run so far while it goes on", async () => {
  const first = new OrderedStage((x: number) => x + 1, 1, { name: "first" });
  const second = new UnorderedStage((x: number) => x * 2, 2, {
    name: "second",
  });
  const pipe = new Pipeline<number, number>(first.link(second));
  assert.match(pipe.insights(), /so far \(the run goes on\)/);
  for (let i = 0; i < 20; i++) pipe.put(i);
  pipe.put(null);
  await Array.fromAsync(pipe);
  await pipe.done;
  const report = pipe.insights();
  assert.match(
    report,
    /^MPipe insights: 2 stages, 20 tasks put, 20 results read, .* \(the run is over\)$/m,
  );
  assert.match(
    report,
    /^Stage 1 'first' \(ordered, 1 worker\): 20 tasks reached it, 20 done/m,
  );
  assert.match(
    report,
    /^Stage 2 'second' \(unordered, 2 workers\): 20 tasks reached it, 20 done/m,
  );
  assert.equal(report.split("\n").filter((l) => /^ {2}#\d/.test(l)).length, 3);
  assert.match(report, /^Bottleneck: /m);
});
