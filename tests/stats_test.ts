import assert from "node:assert/strict";
import {
  FilterStage,
  OrderedStage,
  Pipeline,
  type PipelineStats,
  Stage,
  type StageError,
  type StageStats,
  UnorderedStage,
  UnorderedWorker,
} from "../mod.ts";
import { internalsOf } from "../lib/stage/internals.ts";
import { StageStatus } from "../lib/shared_memory/status.ts";

// These tests check what the figures must say whatever the timing: totals
// that add up after a run, and, while a stage is held up through shared
// memory, what waits in front of it. None asserts how fast anything was.

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

function sum(values: number[]): number {
  return values.reduce((total, value) => total + value, 0);
}

/** Waits (a hang guard, not a speed check) until `test` holds. */
async function until(what: string, test: () => boolean): Promise<void> {
  for (let tries = 0; !test(); tries++) {
    if (tries > 30_000) throw new Error(`gave up waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/** The stage of `stats` named `name`. */
function stageNamed(stats: PipelineStats, name: string): StageStats {
  const stage = stats.stages.find((s) => s.name === name);
  assert.ok(stage !== undefined, `no stage named ${name}`);
  return stage;
}

/**
 * Checks the totals of a finished run: each stage's figures are the sums of
 * its workers', every task that reached it was done or skipped, and nothing
 * is in flight or waiting.
 */
function assertTotals(stats: PipelineStats): void {
  assert.equal(stats.done, true);
  for (const stage of stats.stages) {
    const of = (key: "tasks" | "results" | "skipped" | "inFlight") =>
      sum(stage.workers.map((worker) => worker[key]));
    const at = `stage '${stage.name}'`;
    assert.equal(stage.workers.length, stage.size, at);
    assert.equal(stage.tasks, of("tasks"), `${at}: tasks`);
    assert.equal(stage.results, of("results"), `${at}: results`);
    assert.equal(stage.skipped, of("skipped"), `${at}: skipped`);
    assert.equal(stage.inFlight, 0, `${at}: in flight`);
    assert.equal(stage.backlog, 0, `${at}: backlog`);
    assert.equal(stage.tasks + stage.skipped, stage.received, `${at}: totals`);
  }
  assert.equal(stats.stages[0]!.received, stats.put);
}

/** Puts `tasks` and the stop, reads every result, and waits for `done`. */
async function run<T>(pipe: Pipeline<T, unknown>, tasks: T[]): Promise<void> {
  for (const task of tasks) pipe.put(task);
  pipe.put(null);
  await Array.fromAsync(pipe);
  await pipe.done;
}

/**
 * A worker that holds task 0 until the main thread lets it go: it raises
 * word 1 of its gate when it has started the task, and waits on word 0.
 */
class Gated extends UnorderedWorker<number, number> {
  gate: Int32Array;
  constructor(gate: SharedArrayBuffer) {
    super();
    this.gate = new Int32Array(gate);
  }
  doTask(task: number): number {
    if (task === 0) {
      Atomics.store(this.gate, 1, 1);
      Atomics.notify(this.gate, 1);
      while (Atomics.load(this.gate, 0) === 0) Atomics.wait(this.gate, 0, 0);
    }
    return task;
  }
}

/** `Gated` for tasks that are numbers written as text. */
class GatedText extends UnorderedWorker<string, number> {
  gate: Int32Array;
  constructor(gate: SharedArrayBuffer) {
    super();
    this.gate = new Int32Array(gate);
  }
  doTask(task: string): number {
    const n = parseInt(task);
    if (n === 0) {
      Atomics.store(this.gate, 1, 1);
      Atomics.notify(this.gate, 1);
      while (Atomics.load(this.gate, 0) === 0) Atomics.wait(this.gate, 0, 0);
    }
    return n;
  }
}

/** A gate for `Gated`: wait until task 0 started, then open it. */
function gate(): {
  buffer: SharedArrayBuffer;
  started(): Promise<void>;
  open(): void;
} {
  const buffer = new SharedArrayBuffer(8);
  const words = new Int32Array(buffer);
  return {
    buffer,
    async started() {
      while (Atomics.load(words, 1) === 0) {
        await Atomics.waitAsync(words, 1, 0).value;
      }
    },
    open() {
      Atomics.store(words, 0, 1);
      Atomics.notify(words, 0);
    },
  };
}

// ---- totals after full runs ----

Deno.test("Pipeline.stats() after a chain: every stage's totals add up, the root first", async () => {
  const parse = new OrderedStage((x: number) => x + 1, 2, { name: "parse" });
  // Odd tasks give no result: the next stage gets fewer.
  const evens = new UnorderedStage(
    (x: number) => (x % 2 === 0 ? x : null),
    2,
    { name: "evens" },
  );
  const last = new OrderedStage((x: number) => x * 10, 1, { name: "last" });
  const pipe = new Pipeline<number, number>(parse.link(evens.link(last)));
  await run(pipe, range(40));
  const stats = pipe.stats();
  assertTotals(stats);
  assert.deepEqual(stats.stages.map((s) => s.name), ["parse", "evens", "last"]);
  assert.deepEqual(stats.stages.map((s) => s.received), [40, 40, 20]);
  assert.deepEqual(stats.stages.map((s) => s.results), [40, 20, 20]);
  assert.deepEqual(stats.stages.map((s) => s.next), [[1], [2], []]);
  assert.deepEqual([stats.put, stats.read], [40, 20]);
  assert.deepEqual(stats.stages.map((s) => s.size), [2, 2, 1]);
  assert.deepEqual(stats.stages.map((s) => s.ordered), [true, false, true]);
});

Deno.test("Pipeline.stats() after a fork: each branch gets every result, and read counts both leaves", async () => {
  const root = new OrderedStage((x: number) => x, 1, { name: "root" });
  const left = new OrderedStage((x: number) => x + 1, 2, { name: "left" });
  const right = new UnorderedStage(
    (x: number) => (x < 5 ? x : undefined),
    1,
    { name: "right" },
  );
  const pipe = new Pipeline<number, number>(root.link(left).link(right));
  await run(pipe, range(12));
  const stats = pipe.stats();
  assertTotals(stats);
  assert.deepEqual(stats.stages.map((s) => s.name), ["root", "left", "right"]);
  assert.deepEqual(stats.stages.map((s) => s.received), [12, 12, 12]);
  assert.deepEqual(stats.stages[0]!.next, [1, 2]);
  assert.equal(stats.read, 12 + 5);
});

Deno.test("Pipeline.stats() after a join: the joined stage comes after both, and gets both's results", async () => {
  const root = new OrderedStage((x: number) => x, 1, { name: "root" });
  const b = new OrderedStage((x: number) => x, 1, { name: "b" });
  const c = new UnorderedStage((x: number) => (x % 3 === 0 ? x : null), 2, {
    name: "c",
  });
  const d = new UnorderedStage((x: number) => x, 2, { name: "d" });
  root.link(b).link(c);
  b.link(d);
  c.link(d);
  const pipe = new Pipeline<number, number>(root);
  await run(pipe, range(30));
  const stats = pipe.stats();
  assertTotals(stats);
  assert.deepEqual(stats.stages.map((s) => s.name), ["root", "b", "c", "d"]);
  assert.equal(stageNamed(stats, "d").received, 30 + 10);
  assert.equal(stats.read, 40);
});

Deno.test("Pipeline.stats() after a FilterStage: its sub-pipelines' stages come right after it, and their totals add up", async () => {
  const sub1 = new OrderedStage(
    async (x: number) => {
      await new Promise((resolve) => setTimeout(resolve, 2));
      return x;
    },
    1,
    { name: "sub1" },
  );
  const sub2 = new OrderedStage((x: number) => x, 1, { name: "sub2" });
  const other = new UnorderedStage((x: number) => x, 1, { name: "other" });
  sub1.link(sub2);
  const filter = new FilterStage<number, number>([sub1, other], {
    maxTasks: 1,
    name: "filter",
  });
  const after = new OrderedStage((x: unknown) => x, 1, { name: "after" });
  const root = new OrderedStage((x: number) => x, 1, { name: "root" });
  const pipe = new Pipeline<number, unknown>(root.link(filter.link(after)));
  await run(pipe, range(30));
  const stats = pipe.stats();
  assertTotals(stats);
  assert.deepEqual(stats.stages.map((s) => s.name), [
    "root",
    "filter",
    "sub1",
    "sub2",
    "other",
    "after",
  ]);
  assert.deepEqual(stats.stages.map((s) => s.within), [
    null,
    null,
    1,
    1,
    1,
    null,
  ]);
  assert.equal(stageNamed(stats, "filter").received, 30);
  assert.equal(stageNamed(stats, "after").received, 30);
  const passed = stageNamed(stats, "sub1").received;
  assert.ok(passed >= 1 && passed <= 30, `passed ${passed}`);
  assert.equal(stageNamed(stats, "sub2").received, passed);
  // The filter's sub-pipelines return to the filter, not to the reader.
  assert.equal(stats.read, 30);
});

Deno.test("Pipeline.stats() counts skipped tasks apart from finished ones, as Stage.skipped does", async () => {
  for (const onError of ["skip", "callback"] as const) {
    const errors: StageError[] = [];
    const flaky = new OrderedStage(
      (x: number) => {
        if (x % 3 === 0) throw new Error(`no ${x}`);
        return x;
      },
      2,
      {
        name: "flaky",
        onError: onError === "skip" ? "skip" : (error) => {
          errors.push(error);
        },
      },
    );
    const next = new OrderedStage((x: number) => x, 1, { name: "next" });
    const pipe = new Pipeline<number, number>(flaky.link(next));
    await run(pipe, range(30));
    const stats = pipe.stats();
    assertTotals(stats);
    const stage = stageNamed(stats, "flaky");
    assert.deepEqual([stage.tasks, stage.skipped, stage.results], [20, 10, 20]);
    assert.equal(stage.skipped, flaky.skipped);
    assert.equal(stageNamed(stats, "next").received, 20);
    if (onError === "callback") assert.equal(errors.length, 10);
  }
});

Deno.test("Pipeline.stats() after restarts: a lost worker's task is skipped, and its place counts the restart", async () => {
  const mortal = new UnorderedStage(
    (task: number) => {
      if (task === 5 || task === 17) {
        (globalThis as unknown as { close(): void }).close();
      }
      return task;
    },
    2,
    { name: "mortal", restart: true, onError: "skip" },
  );
  const pipe = new Pipeline<number, number>(mortal);
  await run(pipe, range(24));
  const stats = pipe.stats();
  assertTotals(stats);
  const stage = stats.stages[0]!;
  assert.deepEqual([stage.tasks, stage.skipped, stage.results], [22, 2, 22]);
  assert.equal(sum(stage.workers.map((w) => w.restarts)), 2);
  assert.equal(stage.skipped, mortal.skipped);
});

Deno.test('Pipeline.stats() after a task timed out under onError "skip": skipped, and its worker replaced', async () => {
  const stuck = new OrderedStage(
    async (task: number) => {
      if (task === 2) {
        await new Promise((resolve) => setTimeout(resolve, 60_000));
      }
      return task;
    },
    1,
    { name: "stuck", taskTimeout: 200, onError: "skip" },
  );
  const pipe = new Pipeline<number, number>(stuck);
  await run(pipe, range(5));
  const stats = pipe.stats();
  assertTotals(stats);
  const stage = stats.stages[0]!;
  assert.deepEqual([stage.tasks, stage.skipped], [4, 1]);
  assert.equal(stage.workers[0]!.restarts, 1);
});

Deno.test("Pipeline.stats(): the doStopTask call is no task of its stage, though its result is one", async () => {
  const stopper = new OrderedStage(
    (x: number | null) => (x === null ? -1 : x),
    2,
    { name: "stopper", doStopTask: true },
  );
  const next = new OrderedStage((x: number) => x, 1, { name: "next" });
  const pipe = new Pipeline<number, number>(stopper.link(next));
  await run(pipe, range(10));
  const stats = pipe.stats();
  assertTotals(stats);
  const stage = stats.stages[0]!;
  // Each of the two workers ran doTask(null) once, and put its result.
  assert.deepEqual([stage.tasks, stage.results], [10, 12]);
  assert.equal(stageNamed(stats, "next").received, 12);
});

Deno.test("Pipeline.stats() with concurrency: totals add up", async () => {
  const io = new UnorderedStage(
    async (x: number) => {
      await new Promise((resolve) => setTimeout(resolve, x % 4));
      return x;
    },
    2,
    { name: "io", concurrency: 4 },
  );
  const pipe = new Pipeline<number, number>(io);
  await run(pipe, range(40));
  const stats = pipe.stats();
  assertTotals(stats);
  assert.equal(stats.stages[0]!.tasks, 40);
  assert.equal(stats.read, 40);
});

// ---- snapshots ----

Deno.test("Pipeline.stats() before any worker started: every stage, nothing counted", async () => {
  const a = new OrderedStage((x: number) => x, 2, { name: "a" });
  const b = new UnorderedStage((x: number) => x, 3, { name: "b" });
  await using pipe = new Pipeline<number, number>(a.link(b));
  const stats = pipe.stats();
  assert.equal(stats.done, false);
  assert.deepEqual([stats.put, stats.read], [0, 0]);
  assert.deepEqual(stats.stages.map((s) => [s.name, s.workers.length]), [
    ["a", 2],
    ["b", 3],
  ]);
  for (const stage of stats.stages) {
    assert.deepEqual(
      [stage.received, stage.tasks, stage.inFlight, stage.backlog],
      [0, 0, 0, 0],
    );
    assert.deepEqual(stage.slowest, []);
  }
  pipe.put(null);
  await Array.fromAsync(pipe);
});

Deno.test("Pipeline.stats() after done: final, and the run's time no longer grows", async () => {
  const pipe = new Pipeline<number, number>(new OrderedStage((x: number) => x));
  await run(pipe, range(3));
  const first = pipe.stats();
  await new Promise((resolve) => setTimeout(resolve, 5));
  const second = pipe.stats();
  assert.equal(first.done, true);
  assert.deepEqual(second, first);
  const worker = first.stages[0]!.workers[0]!;
  assert.ok(worker.startMs > 0 && worker.initMs >= 0);
  assert.ok(worker.busyMs > 0 && worker.idleMs >= 0);
});

Deno.test("Pipeline.stats() while a stage is held up: its backlog waits in front of it, one task in flight", async () => {
  const held = gate();
  const quick = new OrderedStage((x: number) => x, 1, { name: "quick" });
  const slow = new Stage(Gated, 1, { name: "slow", args: [held.buffer] });
  const pipe = new Pipeline<number, number>(quick.link(slow));
  try {
    for (const task of range(20)) pipe.put(task);
    pipe.put(null);
    await held.started();
    // The quick stage goes on; its figures arrive a batch late.
    await until(
      "the quick stage's 20 results",
      () => pipe.stats().stages[0]!.results === 20,
    );
    const stats = pipe.stats();
    const [first, second] = stats.stages;
    assert.equal(stats.done, false);
    assert.deepEqual([first!.tasks, first!.backlog, first!.inFlight], [
      20,
      0,
      0,
    ]);
    assert.deepEqual(
      [second!.received, second!.inFlight, second!.backlog, second!.tasks],
      [20, 1, 19, 0],
    );
    assert.equal(second!.workers[0]!.inFlight, 1);
    // The held task's time counts as busy while it runs.
    await until(
      "busy time",
      () => pipe.stats().stages[1]!.workers[0]!.busyMs > 0,
    );
  } finally {
    held.open();
  }
  assert.deepEqual(await Array.fromAsync(pipe), range(20));
  await pipe.done;
  assertTotals(pipe.stats());
});

Deno.test("Pipeline.stats() counts the five slowest tasks of a stage, by sequence number, slowest first", async () => {
  const held = gate();
  const stage = new Stage(Gated, 2, { name: "gated", args: [held.buffer] });
  const pipe = new Pipeline<number, number>(stage);
  try {
    for (const task of range(30)) pipe.put(task);
    pipe.put(null);
    await held.started();
    // Task 0 is held until every other task is done by the other worker, so
    // it takes longer than any of them.
    await until("29 tasks done", () => pipe.stats().stages[0]!.tasks === 29);
  } finally {
    held.open();
  }
  await Array.fromAsync(pipe);
  await pipe.done;
  const { slowest, workers } = pipe.stats().stages[0]!;
  assert.equal(slowest.length, 5);
  assert.equal(slowest[0]!.task, 0);
  assert.deepEqual(workers[slowest[0]!.worker]!.slowest[0], slowest[0]);
  for (let i = 1; i < slowest.length; i++) {
    assert.ok(slowest[i - 1]!.ms >= slowest[i]!.ms);
    assert.ok(slowest[i]!.task > 0 && slowest[i]!.task < 30);
  }
});

Deno.test("Pipeline.stats(): put counts tasks as they enter, and fullMs the time put waited for room", async () => {
  const held = gate();
  const slow = new Stage(Gated, 1, {
    name: "slow",
    args: [held.buffer],
    maxBacklog: 1,
  });
  const pipe = new Pipeline<number, number>(slow);
  try {
    // A task that cannot be cloned, and the stop request, are not counted.
    await assert.rejects(pipe.put((() => 1) as unknown as number));
    for (const task of range(5)) pipe.put(task);
    pipe.put(null);
    await held.started();
    // Task 0 runs, task 1 holds the backlog's one place, the others wait.
    await until("task 1 entered", () => pipe.stats().put === 2);
    await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(pipe.stats().put, 2);
    assert.equal(pipe.stats().stages[0]!.backlog, 1);
  } finally {
    held.open();
  }
  assert.deepEqual(await Array.fromAsync(pipe), range(5));
  await pipe.done;
  const stats = pipe.stats();
  assertTotals(stats);
  assert.equal(stats.put, 5);
  assert.ok(stats.stages[0]!.fullMs > 0);
});

Deno.test("Pipeline.stats(): read counts results however they are read", async () => {
  const root = new OrderedStage((x: number) => x, 1, { name: "root" });
  const left = new OrderedStage((x: number) => x, 1, { name: "left" });
  const right = new OrderedStage((x: number) => x, 1, { name: "right" });
  const pipe = new Pipeline<number, number>(root.link(left).link(right));
  for (const task of range(6)) pipe.put(task);
  pipe.put(null);
  assert.equal(await left.get(), 0);
  assert.equal(pipe.stats().read, 1);
  for await (const _ of right.results());
  assert.equal(pipe.stats().read, 7);
  assert.notEqual(await pipe.get(), null);
  assert.equal(pipe.stats().read, 8);
  for await (const _ of pipe);
  assert.equal(pipe.stats().read, 12);
  await pipe.done;
});

Deno.test("Pipeline.stats(): put and read count what goes through feed() and the streams too", async () => {
  const pipe = new Pipeline<number, number>(
    new OrderedStage((x: number) => x * 2, 2, { name: "double" }),
  );
  const fed = pipe.feed(range(25));
  const results = await Array.fromAsync(pipe.readable);
  await fed;
  await pipe.done;
  assert.deepEqual(results, range(25).map((x) => x * 2));
  const stats = pipe.stats();
  assertTotals(stats);
  assert.deepEqual([stats.put, stats.read], [25, 25]);
});

Deno.test("Pipeline.stats(): a full input shows as the producers' fullMs and the producer's blockedMs", async () => {
  const held = gate();
  // Records of about 900 bytes: a few fill a 4 KiB ring.
  const big = new OrderedStage((x: number) => `${x}`.padEnd(900, "."), 1, {
    name: "big",
  });
  const slow = new Stage(GatedText, 1, { name: "slow", args: [held.buffer] });
  const pipe = new Pipeline<number, number>(big.link(slow), {
    ringBytes: 4096,
  });
  try {
    for (const task of range(20)) pipe.put(task);
    pipe.put(null);
    await held.started();
    // The ring is full and 'big' is stuck writing: it holds a task.
    await until("'big' stuck", () => {
      const [first, second] = pipe.stats().stages;
      return first!.inFlight > 0 && second!.backlog >= 3;
    });
    // Long enough for it to fall asleep (it gets there in microseconds).
    await new Promise((resolve) => setTimeout(resolve, 20));
  } finally {
    held.open();
  }
  assert.deepEqual(
    (await Array.fromAsync(pipe)).sort((a, b) => a - b),
    range(20),
  );
  await pipe.done;
  const stats = pipe.stats();
  assertTotals(stats);
  assert.ok(stats.stages[1]!.fullMs > 0, "the slow stage's input was full");
  assert.ok(
    stats.stages[0]!.workers[0]!.blockedMs > 0,
    "the big stage was blocked",
  );
  assert.ok(
    stats.stages[0]!.workers[0]!.blockedMs <=
      stats.stages[0]!.workers[0]!.busyMs,
  );
});

// ---- issue 21, item 9: the totals add up after a failure or terminate() ----

/** `promise`, or a rejection after 30 s: a hang guard, not a speed check. */
function guarded<T>(what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} hung`)), 30_000);
  });
  return Promise.race([promise, hang]).finally(() => clearTimeout(timer));
}

/**
 * Checks the totals of a run that ended early (`end`): every stage's
 * tasks, skips and drops add up to what reached it, nothing is left in
 * flight or waiting, and the insights say how the run ended.
 */
function assertEndedTotals(
  stats: PipelineStats,
  end: "failure" | "terminate",
): void {
  assert.equal(stats.done, true);
  for (const stage of stats.stages) {
    const at = `stage '${stage.name}'`;
    assert.equal(stage.inFlight, 0, `${at}: in flight`);
    assert.equal(stage.backlog, 0, `${at}: backlog`);
    assert.ok(stage.dropped >= 0, `${at}: dropped`);
    assert.deepEqual(
      stage.workers.map((w) => w.inFlight),
      stage.workers.map(
        () => 0,
      ),
      `${at}: workers in flight`,
    );
    assert.equal(
      stage.tasks + stage.skipped + stage.dropped,
      stage.received,
      `${at}: totals`,
    );
  }
  assert.equal(stats.stages[0]!.received, stats.put);
  assert.ok(
    stats.stages.some((stage) => stage.dropped > 0),
    "the early end dropped tasks",
  );
  assert.equal(stats.end, end);
}

/** A task that waits `x % 4` ms, so that workers hold tasks at any time. */
async function pause(x: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, x % 4));
  return x;
}

Deno.test("Pipeline.stats() after a failure in an ordered chain: what was in flight or waiting is dropped, and the totals add up", async () => {
  const first = new OrderedStage(
    async (x: number) => {
      await new Promise((resolve) => setTimeout(resolve, x % 4));
      if (x === 50) throw new Error("no fifties");
      return x;
    },
    2,
    { name: "first" },
  );
  const second = new OrderedStage((x: number) => x + 1, 2, { name: "second" });
  const pipe = new Pipeline<number, number>(first.link(second));
  const fed = pipe.feed(range(200)).catch(() => {});
  await assert.rejects(
    guarded("reading", Array.fromAsync(pipe)),
    /no fifties/,
  );
  await guarded("done", pipe.done.catch(() => {}));
  await fed;
  const stats = pipe.stats();
  assertEndedTotals(stats, "failure");
  const report = pipe.insights();
  assert.match(report, /\(the run failed\)/);
  assert.doesNotMatch(report, /in flight|goes on/);
  assert.match(report, /dropped when the run ended early/);
});

Deno.test("Pipeline.stats() after terminate() in a fork of ordered and unordered stages with concurrency: the totals add up", async () => {
  const root = new UnorderedStage(pause, 2, { name: "root", concurrency: 4 });
  const left = new OrderedStage(pause, 2, { name: "left", concurrency: 3 });
  const right = new UnorderedStage((x: number) => x, 1, { name: "right" });
  const pipe = new Pipeline<number, number>(root.link(left).link(right));
  const fed = pipe.feed(range(300)).catch(() => {});
  let read = 0;
  await guarded(
    "reading",
    (async () => {
      for await (const _ of pipe) if (++read === 40) pipe.terminate();
    })(),
  );
  await guarded("done", pipe.done);
  await fed;
  const stats = pipe.stats();
  assertEndedTotals(stats, "terminate");
  assert.match(pipe.insights(), /\(the run was terminated\)/);
  assert.doesNotMatch(pipe.insights(), /in flight|goes on/);
});

Deno.test("Pipeline.stats() after terminate() while an unordered stage with concurrency holds tasks: the totals add up", async () => {
  const pipe = new Pipeline<number, number>(
    new UnorderedStage(pause, 2, { concurrency: 4 }),
  );
  const fed = pipe.feed(range(200)).catch(() => {});
  let read = 0;
  await guarded(
    "reading",
    (async () => {
      for await (const _ of pipe) if (++read === 30) pipe.terminate();
    })(),
  );
  await guarded("done", pipe.done);
  await fed;
  assertEndedTotals(pipe.stats(), "terminate");
});

Deno.test("Pipeline.stats() after a failure in the second stage of a chain: the first's results that reached it are dropped there", async () => {
  const first = new UnorderedStage((x: number) => x, 1, { name: "first" });
  const second = new OrderedStage(
    async (x: number) => {
      await new Promise((resolve) => setTimeout(resolve, 1));
      if (x === 20) throw new Error("no twenties");
      return x;
    },
    1,
    { name: "second" },
  );
  const pipe = new Pipeline<number, number>(first.link(second));
  const fed = pipe.feed(range(100)).catch(() => {});
  await assert.rejects(
    guarded("reading", Array.fromAsync(pipe)),
    /no twenties/,
  );
  await guarded("done", pipe.done.catch(() => {}));
  await fed;
  assertEndedTotals(pipe.stats(), "failure");
});

Deno.test("Pipeline.stats() after a failure or terminate() is final: what a killed worker still publishes (terminate() does not wait for its thread) changes no figure", async () => {
  for (const end of ["failure", "terminate"] as const) {
    const stage = new OrderedStage(
      async (x: number) => {
        await new Promise((resolve) => setTimeout(resolve, x % 4));
        if (x === 30) throw new Error("task 30 broke");
        return x;
      },
      2,
      { name: "killed" },
    );
    const pipe = new Pipeline<number, number>(stage);
    // Task 30 fails the first run; the second is terminated before it.
    const tasks = end === "failure"
      ? range(100)
      : range(500).map((x) => x + 100);
    const fed = pipe.feed(tasks).catch(() => {});
    if (end === "terminate") {
      await guarded("reading", pipe.get());
      pipe.terminate();
    }
    await guarded("reading", Array.fromAsync(pipe).catch(() => {}));
    await guarded("done", pipe.done.catch(() => {}));
    await fed;
    const final = pipe.stats();
    // The stores of a killed worker caught in the middle of its publish,
    // after its last check of the kill word: a task done, and its result.
    const status = internalsOf(stage).status!;
    status.figures[status.figure(0, StageStatus.TASKS)]! += 1;
    status.figures[status.figure(0, StageStatus.RESULTS)]! += 1;
    assert.deepEqual(pipe.stats().stages, final.stages, end);
    assertEndedTotals(pipe.stats(), end);
  }
});

Deno.test("Pipeline.stats() after a run that ended by its stop: nothing dropped, and the end says so", async () => {
  const pipe = new Pipeline<number, number>(new OrderedStage(pause, 2));
  await run(pipe, range(20));
  const stats = pipe.stats();
  assertTotals(stats);
  assert.equal(stats.end, "stop");
  assert.equal(stats.stages[0]!.dropped, 0);
  pipe.terminate();
  assert.equal(pipe.stats().end, "stop", "a terminate() after the end");
});

Deno.test("stats(): durations counts every task a worker timed in its bucket, from 10 µs to 10 s", async () => {
  const slow = new OrderedStage(
    async (x: number) => {
      await new Promise((resolve) => setTimeout(resolve, 30));
      return x;
    },
    1,
    { name: "slow" },
  );
  const pipe = new Pipeline<number, number>(slow);
  await pipe.feed([1, 2, 3, 4]);
  await Array.fromAsync(pipe);
  await pipe.done;
  const { durations, tasks, workers } = pipe.stats().stages[0]!;
  assert.equal(durations.boundsMs[0], 0.01);
  assert.equal(durations.boundsMs.at(-1), 10_000);
  assert.equal(durations.counts.length, durations.boundsMs.length + 1);
  assert.equal(durations.counts.reduce((sum, n) => sum + n, 0), tasks);
  // A slow task is claimed alone: each took 30 ms or more, so none counts at or below 25 ms.
  const upTo25 = durations.boundsMs.findIndex((bound) => bound === 25);
  assert.equal(
    durations.counts.slice(0, upTo25 + 1).reduce((sum, n) => sum + n, 0),
    0,
  );
  assert.ok(durations.sumMs >= 4 * 30, String(durations.sumMs));
  assert.deepEqual(workers[0]!.durations, durations);
});
