import assert from "node:assert/strict";
import { OrderedStage, Pipeline, type PipelineStats } from "../mod.ts";
import {
  ProgressDisplay,
  type ProgressSink,
  sampleOf,
  stageCells,
  summaryLines,
} from "../lib/features/progress.ts";
import { fakeRun, fakeStage, fakeWorker } from "./support/fake_stats.ts";
import { runScript } from "./support/run_script.ts";

// The display's lines are made from the statistics alone: most tests give it
// made-up ones and call update() themselves. The subprocess tests check what
// a program that turns it on prints, and that it ends by itself.

/** A sink that keeps what is written. */
function fakeSink(isTerminal: boolean, columns?: number): ProgressSink & {
  writes: string[];
} {
  const writes: string[] = [];
  return { isTerminal, columns, writes, write: (text) => writes.push(text) };
}

/** A run of three stages, `done` tasks each, of 100. */
function threeStages(done: number, elapsedMs: number): PipelineStats {
  const stage = (name: string, next: number[]) =>
    fakeStage(name, [fakeWorker(elapsedMs * 0.5, elapsedMs * 0.5)], {
      tasks: done,
      received: 100,
      backlog: 100 - done,
      next,
    });
  return fakeRun(
    [stage("parse", [1]), stage("slow", [2]), stage("format", [])],
    elapsedMs,
    { done: false },
  );
}

/** A display of `sink`, reading `stats` (a long interval: the test draws). */
function display(
  stats: () => PipelineStats,
  sink: ProgressSink,
  total?: number,
): ProgressDisplay {
  return new ProgressDisplay(stats, { total, intervalMs: 60_000 }, sink);
}

// ---- options ----

Deno.test("Pipeline options.progress refuses bad values, naming the option and the value", () => {
  const root = () => new OrderedStage((x: number) => x);
  assert.throws(
    () => new Pipeline(root(), { progress: "yes" as unknown as boolean }),
    TypeError,
    `'options.progress' must be a boolean or an object ({ total?, intervalMs? }), got "yes"`,
  );
  assert.throws(
    () => new Pipeline(root(), { progress: { total: -1 } }),
    RangeError,
    "'options.progress.total' must be a non-negative integer (the number of tasks you will put), got -1",
  );
  assert.throws(
    () => new Pipeline(root(), { progress: { total: 1.5 } }),
    RangeError,
  );
  assert.throws(
    () => new Pipeline(root(), { progress: { intervalMs: 0 } }),
    RangeError,
    "'options.progress.intervalMs' must be a positive number of milliseconds, got 0",
  );
  assert.throws(
    () => new Pipeline(root(), { progress: { intervalMs: Infinity } }),
    RangeError,
  );
  assert.throws(
    () =>
      new Pipeline(root(), {
        progress: { every: 5 } as unknown as { total: number },
      }),
    TypeError,
    "'options.progress.every' is not a progress option; the options are total, intervalMs",
  );
});

// ---- lines ----

Deno.test("ProgressDisplay off a terminal writes a plain line per stage each update: name, count, rate, backlog, busy", () => {
  const sink = fakeSink(false);
  let stats = threeStages(10, 1000);
  const progress = display(() => stats, sink);
  try {
    progress.update();
    stats = threeStages(30, 2000);
    progress.update();
    assert.equal(sink.writes.length, 2);
    const lines = sink.writes[1]!.split("\n").filter((l) => l !== "");
    assert.deepEqual(lines, [
      "[mpipe 2.0 s] parse: 30 tasks, 20/s, backlog 70, busy 50%",
      "[mpipe 2.0 s] slow: 30 tasks, 20/s, backlog 70, busy 50%",
      "[mpipe 2.0 s] format: 30 tasks, 20/s, backlog 70, busy 50%",
    ]);
    assert.ok(!sink.writes.join("").includes("\x1b"), "no escape codes");
  } finally {
    progress.summarize();
  }
});

Deno.test("ProgressDisplay on a terminal redraws its lines in place, then leaves the summary in their place", () => {
  const sink = fakeSink(true);
  const progress = display(() => threeStages(50, 1000), sink, 100);
  progress.update();
  progress.update();
  // A header and three stages: the redraw climbs four lines.
  assert.ok(!sink.writes[0]!.startsWith("\x1b[4F"));
  assert.ok(
    sink.writes[1]!.startsWith(
      "\x1b[4F\x1b[2Kmpipe 1.0 s: 100 put, 100 read\n",
    ),
  );
  const slow = sink.writes[1]!.split("\n")[2]!;
  assert.ok(slow.startsWith("\x1b[2K"), "each line is cleared first");
  assert.match(
    slow.slice("\x1b[2K".length),
    /^slow\s+50\/100\s+\[█{10}░{10}\] 50%\s+50\/s\s+ETA 1\.0 s\s+backlog 50\s+busy 50%$/,
  );
  progress.summarize();
  assert.ok(sink.writes[2]!.startsWith("\x1b[4F\x1b[J"));
  assert.match(
    sink.writes[2]!,
    /mpipe: done in 1\.0 s: 100 tasks put, 100 results read\n/,
  );
});

Deno.test("ProgressDisplay on a terminal cuts lines to its width, so that none wraps", () => {
  const sink = fakeSink(true, 30);
  const progress = display(() => threeStages(50, 1000), sink, 100);
  try {
    progress.update();
    for (const line of sink.writes[0]!.split("\n").filter((l) => l !== "")) {
      assert.ok(line.replace("\x1b[2K", "").length <= 29, line);
    }
  } finally {
    progress.summarize();
  }
});

Deno.test("ProgressDisplay in a narrow terminal shrinks the bar, then drops it, before it cuts the ETA, backlog and busy cells", () => {
  // The line of the stage "slow" is 81 columns wide with its bar of 20 cells.
  for (
    const [width, bar] of [[76, /\[█{7}░{7}\] 50%/], [62, / 50% /]] as const
  ) {
    const sink = fakeSink(true, width);
    const progress = display(() => threeStages(50, 1000), sink, 100);
    try {
      progress.update();
      const slow = sink.writes[0]!.split("\n")[2]!.replace("\x1b[2K", "");
      assert.ok(slow.length <= width - 1, slow);
      assert.match(slow, bar);
      if (width === 62) assert.doesNotMatch(slow, /[█░]/);
      assert.match(slow, /ETA 1\.0 s\s+backlog 50\s+busy 50%$/);
    } finally {
      progress.summarize();
    }
  }
});

Deno.test("ProgressDisplay.summarize() writes the summary once, and nothing is drawn after it", () => {
  const sink = fakeSink(false);
  const stats = fakeRun([
    fakeStage("a", [fakeWorker(900, 100)], { tasks: 98, skipped: 2 }),
    fakeStage("b", [fakeWorker(100, 900)], { tasks: 98 }),
  ], 2000);
  const progress = display(() => stats, sink);
  progress.summarize("failed");
  progress.summarize();
  progress.update();
  assert.deepEqual(sink.writes, [
    "mpipe: failed in 2.0 s: 100 tasks put, 100 results read\n" +
    "  a  98 tasks  49/s  busy 90%  2 skipped\n" +
    "  b  98 tasks  49/s  busy 10%\n",
  ]);
});

Deno.test("stageCells: with a total, a bar (of barWidth cells), a percentage and an ETA; a sub-pipeline's stage gets none", () => {
  const before = threeStages(20, 1000);
  const now = threeStages(60, 3000);
  const samples = [sampleOf(before), sampleOf(now)];
  const stage = now.stages[1]!;
  assert.deepEqual(stageCells(stage, 1, samples, 100, 20), [
    "slow",
    "60/100",
    `[${"█".repeat(12)}${"░".repeat(8)}] 60%`,
    "20/s",
    "ETA 2.0 s",
    "backlog 40",
    "busy 50%",
  ]);
  assert.equal(stageCells(stage, 1, samples, 100, 0)[2], "60%");
  assert.deepEqual(stageCells(stage, 1, samples, undefined, 0), [
    "slow",
    "60 tasks",
    "",
    "20/s",
    "",
    "backlog 40",
    "busy 50%",
  ]);
  const inFilter = { ...stage, within: 0 };
  assert.equal(stageCells(inFilter, 1, samples, 100, 20)[2], "");
  // Nothing done in the window: no ETA to give.
  const still = [sampleOf(threeStages(60, 2000)), sampleOf(now)];
  assert.deepEqual(stageCells(stage, 1, still, 100, 20).slice(3, 5), [
    "0/s",
    "ETA —",
  ]);
});

Deno.test("summaryLines names every stage with its count, and what is left after a stop that came early", () => {
  const stats = fakeRun(
    [
      fakeStage("only", [fakeWorker(500, 500)], { tasks: 7, backlog: 3 }),
    ],
    1000,
    { put: 10, read: 7 },
  );
  assert.deepEqual(summaryLines(stats, "terminated"), [
    "mpipe: terminated in 1.0 s: 10 tasks put, 7 results read",
    "  only  7 tasks  7.0/s  busy 50%  3 left",
  ]);
});

Deno.test("summaryLines names what a failure dropped at each stage", () => {
  const stats = fakeRun(
    [fakeStage("only", [fakeWorker(500, 500)], { tasks: 7, dropped: 3 })],
    1000,
    { put: 10, read: 7, end: "failure" },
  );
  assert.deepEqual(summaryLines(stats, "failed"), [
    "mpipe: failed in 1.0 s: 10 tasks put, 7 results read",
    "  only  7 tasks  7.0/s  busy 50%  3 dropped",
  ]);
});

// ---- a pipeline's display ----

Deno.test("Pipeline with options.progress: the display ends with the pipeline, after its summary on stderr", async () => {
  const written: string[] = [];
  const stderr = Deno.stderr as { writeSync(bytes: Uint8Array): number };
  const writeSync = stderr.writeSync;
  stderr.writeSync = (bytes) => {
    written.push(new TextDecoder().decode(bytes));
    return bytes.length;
  };
  try {
    const pipe = new Pipeline<number, number>(
      new OrderedStage((x: number) => x, 1, { name: "echo" }),
      { progress: { intervalMs: 1 } },
    );
    for (let i = 0; i < 5; i++) pipe.put(i);
    pipe.put(null);
    await Array.fromAsync(pipe);
    await pipe.done;
    const count = written.length;
    assert.match(
      written.at(-1)!,
      /mpipe: done in .*: 5 tasks put, 5 results read\n {2}echo {2}5 tasks/,
    );
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(written.length, count, "the display wrote after the end");
  } finally {
    stderr.writeSync = writeSync;
  }
});

Deno.test("a program with options.progress: stdout holds its own output alone, stderr names every stage and the final count", async () => {
  const { code, stdout, stderr, signal } = await runScript(
    new URL("./fixtures/progress.ts", import.meta.url),
    { flags: ["--allow-read"] },
  );
  assert.equal(signal, null);
  assert.equal(code, 0, stderr);
  assert.equal(
    stdout,
    Array.from({ length: 40 }, (_, i) => `item ${(i + 1) * 2}\n`).join(""),
  );
  const [during, after] = stderr.split("AFTER DONE\n");
  assert.equal(after, "", "the display wrote after its pipeline ended");
  assert.match(during!, /mpipe: done in .*: 40 tasks put, 40 results read\n/);
  for (const name of ["parse", "slow", "format"]) {
    assert.match(during!, new RegExp(`^ {2}${name} +40 tasks`, "m"));
  }
  // Off a terminal: plain lines, no escape codes.
  assert.ok(!stderr.includes("\x1b"));
});

Deno.test("a program with options.progress exits by itself once its results are read, the summary written", async () => {
  const { code, stdout, stderr, signal } = await runScript(
    new URL("./fixtures/progress.ts", import.meta.url),
    { flags: ["--allow-read"], args: ["end"] },
  );
  assert.equal(signal, null, "the hang guard had to kill it");
  assert.equal(code, 0, stderr);
  assert.equal(stdout.split("\n").length, 41);
  assert.match(stderr, /mpipe: done in .*: 40 tasks put, 40 results read\n/);
});

Deno.test("stageCells and summaryLines show an elastic stage's size: now and at most, then its lowest and highest", () => {
  const stats = fakeRun([
    fakeStage("grow", [fakeWorker(500, 500), fakeWorker(500, 500)], {
      size: 2,
      lowestSize: 1,
      highestSize: 3,
      elastic: { min: 1, max: 4 },
    }),
  ]);
  const samples = [sampleOf(stats)];
  assert.equal(
    stageCells(stats.stages[0]!, 0, samples, undefined, 0).at(-1),
    "2/4 workers",
  );
  assert.match(summaryLines(stats, "done")[1]!, /1 to 3 workers$/);
});
