import assert from "node:assert/strict";
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  StageError,
  UnorderedStage,
} from "../mod.ts";
import {
  collect,
  guarded,
  Handshake,
  range,
} from "./fixtures/faults/harness.ts";
import { GREETERS } from "./fixtures/defects/outer_names.ts";
import { runScript } from "./support/run_script.ts";

// Regression tests for the known defects of the stress campaign (D1–D9) and
// of the new-user issue (N1–N7), one or more per defect, named after it.
// Each asserts what the defect's program should do once fixed, so each fails
// on the code it was written against (D9 excepted: see its test).
//
// A program that crashes or hangs runs in its own process
// (tests/fixtures/defects/*.ts, one per defect), killed after KILL_MS: each
// prints one JSON line of what happened, and a script whose pipeline stops
// making progress prints `{ "stuck": true, ... }` and exits with code 3. Every
// timeout here is a hang guard, not a speed check. The others run here, in a
// `guarded` pipeline that is always terminated.

/** Kills a defect script still running after this long (a hang guard). */
const KILL_MS = 20_000;

/** What a defect script did: its exit, and the JSON lines it printed. */
interface Outcome {
  /** The kill timeout it ran under. */
  timeout: number;
  code: number;
  signal: Deno.Signal | null;
  reports: Record<string, unknown>[];
  stderr: string;
}

/** Runs `tests/fixtures/defects/<name>.ts` and parses what it printed. */
async function runDefect(
  name: string,
  { flags = [], args = [], timeout = KILL_MS }: {
    flags?: string[];
    args?: string[];
    timeout?: number;
  } = {},
): Promise<Outcome> {
  const script = new URL(`./fixtures/defects/${name}.ts`, import.meta.url);
  const { code, signal, stdout, stderr } = await runScript(script, {
    flags,
    args,
    timeout,
  });
  const reports = stdout.split("\n").filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
  return { timeout, code, signal, reports, stderr };
}

/** Says what went wrong with a script, for assertion messages. */
function explain(outcome: Outcome): string {
  const how = outcome.signal !== null
    ? `was killed (${outcome.signal}) after ${outcome.timeout} ms`
    : `exited with code ${outcome.code}`;
  const stderr = outcome.stderr.trim().split("\n").slice(0, 6).join("\n");
  return `the script ${how}; it printed ${JSON.stringify(outcome.reports)}${
    stderr === "" ? "" : `; stderr:\n${stderr}`
  }`;
}

/** Asserts the script ended by itself with code 0 and printed a report; returns the last. */
function assertEnded(outcome: Outcome): Record<string, unknown> {
  const last = outcome.reports.at(-1);
  assert.ok(
    outcome.code === 0 && outcome.signal === null && last !== undefined &&
      last.stuck === undefined,
    explain(outcome),
  );
  return last;
}

/** The error a script reported, asserted to be a StageError of `stage`. */
function assertStageError(
  error: unknown,
  stage: string,
  outcome: Outcome,
): Record<string, unknown> {
  const report = error as Record<string, unknown> | null;
  assert.ok(
    report !== null && report.name === "StageError" && report.stage === stage,
    `expected a StageError of stage '${stage}': ${explain(outcome)}`,
  );
  return report;
}

// ---- D1: taskTimeout ----

for (const ordered of [false, true]) {
  const kind = ordered ? "OrderedStage" : "UnorderedStage";
  Deno.test(`D1: a task that overruns taskTimeout and then finishes (${kind}, onError "skip") leaves every other task exactly once${ordered ? ", in order" : ""}, and skipped === 1`, async () => {
    const outcome = await runDefect("d1_timeout_overrun", {
      args: [ordered ? "ordered" : "unordered"],
    });
    const report = assertEnded(outcome);
    const expected = {
      results: 1999,
      duplicates: 0,
      missing: 0,
      strange: 0,
      hasZero: false,
      skipped: 1,
      error: null,
      ...(ordered ? { outOfOrder: 0 } : {}),
    };
    const got = Object.fromEntries(
      Object.keys(expected).map((key) => [key, report[key]]),
    );
    assert.deepEqual(got, expected, explain(outcome));
  });
}

// ---- D2: a join with maxBacklog ----

Deno.test("D2: a join with maxBacklog fed by an ordered stage of two workers delivers every result: 40,000 for 20,000 tasks (on 4 KiB rings)", async () => {
  // The issue's program (200,000 tasks, 1 MiB rings) stuck after ~150,000
  // tasks; small rings make it stick after ~1,000.
  const outcome = await runDefect("d2_join_backlog", {
    args: ["20000", "4096"],
  });
  const report = assertEnded(outcome);
  assert.equal(report.error, null, explain(outcome));
  assert.equal(report.results, 40_000, explain(outcome));
});

// ---- D3: FilterStage and big records ----

Deno.test("D3: a FilterStage (maxTasks 2, dropResults) of 1.5 MiB frames, which do not fit the rings with their results, passes all 30 frames", async () => {
  const outcome = await runDefect("d3_filter_big", { args: ["frames"] });
  const report = assertEnded(outcome);
  assert.deepEqual(
    { results: report.results, wrong: report.wrong, error: report.error },
    { results: 30, wrong: 0, error: null },
    explain(outcome),
  );
});

Deno.test("D3: a FilterStage (maxTasks 200) of 8 KiB tasks with 512 KiB results passes all 1000 tasks and ends", async () => {
  const outcome = await runDefect("d3_filter_big", { args: ["amplify"] });
  const report = assertEnded(outcome);
  assert.deepEqual(
    { results: report.results, wrong: report.wrong, error: report.error },
    { results: 1000, wrong: 0, error: null },
    explain(outcome),
  );
});

// ---- D4: a failed pipeline's done ----

Deno.test("D4: a failed pipeline's done, awaited in a try after a pause, is caught there instead of ending the process", async () => {
  const outcome = await runDefect("d4_done_rejects", { args: ["catch"] });
  assertEnded(outcome);
  const [first, last] = outcome.reports;
  assertStageError(first?.caught, "failing", outcome);
  assert.deepEqual(last, { end: true }, explain(outcome));
});

Deno.test("D4: `await using` a pipeline whose stage fails ends its block without killing the process", async () => {
  const outcome = await runDefect("d4_done_rejects", { args: ["using"] });
  const last = assertEnded(outcome);
  assert.deepEqual(last, { end: true }, explain(outcome));
  // The block may rethrow the failure; if it does, it is the StageError.
  const caught = outcome.reports.find((report) => "caught" in report);
  if (caught !== undefined) assertStageError(caught.caught, "failing", outcome);
});

// ---- D5: an onError callback that throws ----

Deno.test("D5: an onError callback that throws fails the pipeline with a StageError whose cause is the callback's error, and the reader gets it", async () => {
  const outcome = await runDefect("d5_callback_throws");
  const report = assertEnded(outcome);
  const error = assertStageError(report.error, "picky", outcome);
  assert.equal(error.causeMessage, "the callback throws", explain(outcome));
});

// ---- D6: restart and a worker that dies in doInit ----

for (
  const [how, reason] of [
    ["close", /close\(\)|doInit/],
    ["async-throw", /doInit's timer throws/],
  ] as const
) {
  Deno.test(`D6: restart with a worker that dies in doInit() (${how}) fails with a StageError that says why, after a bounded number of restarts`, async () => {
    const outcome = await runDefect("d6_init_death", { args: [how] });
    const report = assertEnded(outcome);
    const error = assertStageError(report.error, "mortal", outcome);
    assert.match(String(error.message), reason, explain(outcome));
    assert.ok(
      (report.inits as number) <= 50,
      `doInit ran ${report.inits} times: ${explain(outcome)}`,
    );
  });
}

// ---- D7: waiting in get() ----

const MIB = 1024 * 1024;

for (
  const [mode, count, bound, what] of [
    [
      "abort",
      100_000,
      30 * MIB,
      "100k get({ signal }) aborted on an idle pipeline",
    ],
    ["timeout", 100_000, 30 * MIB, "100k get({ timeout }) that time out"],
    [
      "trickle",
      10_000,
      2 * MIB,
      "a for await over 10k results that trickle in after the stop",
    ],
  ] as const
) {
  Deno.test(`D7: ${what} grow the heap by less than ${bound / MIB} MiB`, async () => {
    const outcome = await runDefect("d7_get_leak", {
      flags: ["--v8-flags=--expose-gc"],
      args: [mode, String(count)],
      timeout: 60_000,
    });
    const report = assertEnded(outcome);
    assert.equal(report.error, null, explain(outcome));
    assert.ok(
      (report.growth as number) < bound,
      `the heap grew by ${
        ((report.growth as number) / MIB).toFixed(1)
      } MiB (${report.perWait} bytes per wait): ${explain(outcome)}`,
    );
  });
}

// ---- D8: args that cannot be cloned ----

Deno.test("D8: args that cannot be cloned throw a TypeError naming the stage and 'options.args' before any worker starts, and the script ends by itself", async () => {
  const outcome = await runDefect("d8_uncloneable_args", { timeout: 5_000 });
  const report = assertEnded(outcome);
  const error = report.error as Record<string, unknown> | null;
  assert.ok(
    error !== null &&
      (error.name === "TypeError" || error.name === "DataCloneError"),
    explain(outcome),
  );
  assert.match(String(error.message), /'adder'/, explain(outcome));
  assert.match(String(error.message), /'options\.args'/, explain(outcome));
  assert.equal(report.started, 0, `workers started: ${explain(outcome)}`);
});

// ---- D9: a "skip" storm ----

/** Throws unless its task is a multiple of 11. */
function mostlyThrows(task: number): number {
  if (task % 11 !== 0) throw new Error(`task ${task} throws`);
  return task;
}

Deno.test('D9: onError "skip" (no callback) over 100k failing tasks counts skipped === 100,000 and delivers every other result in order', async () => {
  // D9 itself is speed (a message per skipped task): bench/skip_storm.ts
  // measures it. This test holds the count, which the fix must keep.
  const stage = new OrderedStage(mostlyThrows, 2, {
    name: "storm",
    onError: "skip",
  });
  const pipe = new Pipeline<number, number>(stage);
  await guarded(pipe, async () => {
    const n = 110_000;
    const producer = (async () => {
      for (let task = 0; task < n; task++) await pipe.put(task);
      await pipe.put(null);
    })();
    const results = await Array.fromAsync(pipe);
    await producer;
    await pipe.done;
    assert.deepEqual(results, range(n).filter((task) => task % 11 === 0));
    assert.equal(stage.skipped, 100_000);
  }, 60_000);
});

// ---- N1: get() on a pipeline whose target cannot be loaded ----

for (
  const [what, args, flags] of [
    ["a module that does not exist", ["missing"], ["--allow-read"]],
    ["an existing module without --allow-read", ["existing"], ["--no-prompt"]],
  ] as const
) {
  Deno.test(`N1: get() on a pipeline of a Stage of ${what}, with no task put, rejects with a StageError`, async () => {
    const outcome = await runDefect("n1_unloadable_get", {
      args: [...args],
      flags: [...flags],
      timeout: 10_000,
    });
    const report = assertEnded(outcome);
    const error = report.error as Record<string, unknown> | undefined;
    assert.equal(error?.name, "StageError", explain(outcome));
    assert.match(String(error?.message), /cannot load the target/);
  });
}

// ---- N2: un-awaited puts into a failing pipeline ----

Deno.test("N2: 100k un-awaited puts into a stage that fails: the reader's catch runs and the script exits with 0, while a put its caller awaits still rejects", async () => {
  const outcome = await runDefect("n2_unawaited_puts");
  assertEnded(outcome);
  const caught = outcome.reports.find((report) => "caught" in report);
  assertStageError(caught?.caught ?? null, "picky", outcome);
  const awaited = outcome.reports.find((report) => "awaitedPut" in report);
  assertStageError(awaited?.awaitedPut ?? null, "held", outcome);
});

// ---- N3: outer names that are also worker globals ----

for (const [name, greet] of GREETERS) {
  Deno.test(`N3: a task function that uses the outer variable '${name}' (also a worker global) fails with a StageError naming '${name}'`, async () => {
    const pipe = new Pipeline<string, string>(
      new OrderedStage(greet, 1, { name: "greeter" }),
    );
    await guarded(pipe, async () => {
      pipe.put("Hello").catch(() => {});
      pipe.close().catch(() => {});
      const { values, error } = await collect(pipe.results());
      assert.ok(
        error instanceof StageError,
        `expected a StageError, got results ${JSON.stringify(values)}`,
      );
      assert.equal(error.stage, "greeter");
      assert.ok(error.message.includes(`'${name}'`), error.message);
    });
  });
}

// ---- N5: when onError callbacks run ----

/**
 * Throws on every third task (tasks 2, 8, 14, ... after a 1 ms pause, so
 * that workers fail out of task order); at the stop (doStopTask) counts
 * itself on word 0, so the test knows when every worker is done.
 */
class EveryThirdThrows extends OrderedWorker<number | null, number> {
  words: Int32Array;

  constructor(words: Int32Array) {
    super();
    this.words = words;
  }

  doTask(task: number | null): number | null {
    if (task === null) {
      Atomics.add(this.words, 0, 1);
      Atomics.notify(this.words, 0);
      return null;
    }
    if (task % 3 !== 2) return task;
    const end = performance.now() + (task % 6 === 2 ? 1 : 0);
    while (performance.now() < end) {
      // Busy: this failure comes after a later task's.
    }
    throw new Error(`task ${task} throws`);
  }
}

for (const ordered of [true, false]) {
  const kind = ordered ? "OrderedStage" : "UnorderedStage";
  Deno.test(`N5: every onError callback of an ${kind} runs before the reader sees the end of results${ordered ? ", in task order" : ""}`, async () => {
    const tasks: number[] = [];
    const words = new Int32Array(new SharedArrayBuffer(4));
    const options = {
      name: "flaky",
      doStopTask: true,
      args: [words],
      onError: (error: StageError) => {
        tasks.push(error.task!);
      },
    };
    const stage = ordered
      ? new OrderedStage(EveryThirdThrows, 3, options)
      : new UnorderedStage(EveryThirdThrows, 3, options);
    const pipe = new Pipeline<number | null, number>(stage);
    await guarded(pipe, async () => {
      for (let task = 0; task < 300; task++) pipe.put(task);
      await pipe.put(null);
      // The main thread waits, blocked, until every worker has done its last
      // task and is passing the stop on: the results and the stop are in the
      // rings, and whatever the workers told the main thread is still to be
      // read. (The wait is bounded: a hang guard.)
      const deadline = Date.now() + 10_000;
      for (let done; (done = Atomics.load(words, 0)) < 3;) {
        assert.ok(Date.now() < deadline, "the workers never reached the stop");
        Atomics.wait(words, 0, done, 100);
      }
      const end = performance.now() + 50;
      while (performance.now() < end) {
        // Busy: the stop records follow at once.
      }
      const results = await Array.fromAsync(pipe);
      // The end of results: every callback must have run by now.
      const seen = [...tasks];
      const failed = range(300).filter((task) => task % 3 === 2);
      assert.equal(results.length, 200);
      assert.deepEqual(
        ordered ? seen : seen.sort((a, b) => a - b),
        failed,
        `callbacks at the end of results (${seen.length} of ${failed.length})`,
      );
    });
  });
}

// ---- N6: get() after terminate() ----

Deno.test("N6: Pipeline.get() after terminate() returns null: results not yet read are dropped", async () => {
  const pipe = new Pipeline<number, number>(
    new OrderedStage((x: number) => x, 1),
  );
  await guarded(pipe, async () => {
    for (let task = 0; task < 100; task++) pipe.put(task);
    await pipe.close();
    // Every result is in the rings once the workers have exited.
    await pipe.done;
    assert.equal(await pipe.get(), 0);
    pipe.terminate();
    assert.equal(await pipe.get(), null);
    assert.deepEqual(await Array.fromAsync(pipe), []);
  });
});

// ---- N7: close() twice ----

Deno.test("N7: Pipeline.close() after put(null), and again, resolves: close() is idempotent", async () => {
  const pipe = new Pipeline<number, number>(
    new OrderedStage((x: number) => x, 1),
  );
  await guarded(pipe, async () => {
    await pipe.put(1);
    await pipe.put(null);
    await pipe.close();
    await pipe.close();
    assert.deepEqual(await Array.fromAsync(pipe), [1]);
  });
});

// ---- N8: stack traces of shipped targets ----

Deno.test("N8: the stack of a shipped target's error names the stage and the target, with the target's own line", async () => {
  function twice(x: number): number {
    if (x === 1) {
      throw new Error("one");
    }
    return 2 * x;
  }
  const pipe = new Pipeline<number, number>(
    new OrderedStage(twice, 1, { name: "doubling" }),
  );
  await guarded(pipe, async () => {
    pipe.put(1).catch(() => {});
    await assert.rejects(pipe.get(), (error: unknown) => {
      assert.ok(error instanceof StageError);
      const stack = String((error.cause as Error).stack);
      // The throw is on the target's third line.
      // V8 writes an evaluated script's frame as "(<sourceURL>, <anonymous>:3:13)".
      assert.match(
        stack,
        /at twice \(mpipe:stage\/doubling\/twice\.js\b[^)]*:3:\d+\)/,
        stack,
      );
      return true;
    });
  });
});

// ---- F1: found by tests/random_topology_test.ts ----

/** A task: its number and a payload that says so. */
interface Frame {
  id: number;
  payload: Uint8Array;
}

/** Puts each task twice with putResult(), and returns nothing. */
class Twice extends OrderedWorker<Frame, Frame> {
  doTask(task: Frame): null {
    this.putResult(task);
    this.putResult(task);
    return null;
  }
}

/**
 * Passes each task on; task 9 first sets word 0 (REACHED) and waits for word
 * 1 (GO), holding back every stage before it. The wait is bounded, so that a
 * broken test cannot hang the worker.
 */
class Holds extends OrderedWorker<Frame, Frame> {
  words: Int32Array;

  constructor(words: Int32Array) {
    super();
    this.words = words;
  }

  doTask(task: Frame): Frame {
    if (task.id === 9 && Atomics.load(this.words, 2) === 0) {
      Atomics.store(this.words, 2, 1);
      Atomics.store(this.words, 0, 1);
      Atomics.notify(this.words, 0);
      Atomics.wait(this.words, 1, 0, 10_000);
    }
    return task;
  }
}

Deno.test("F1: a task blocked in putResult() by a full ring does not count against its taskTimeout: no task is dropped and no record is cut", async () => {
  // Found by the random topology test (MPIPE_SEED=28, 72, 104 with only
  // KNOWN.timeoutPutResult on): a task's time includes its putResult()
  // calls, so one that waits there for room is timed out mid-write, its
  // worker replaced: healthy tasks are dropped and a fragmented record is
  // cut short. (The result a task returns is written after its clock stops.)
  const handshake = new Handshake();
  const first = new OrderedStage(Twice, 1, {
    name: "twice",
    taskTimeout: 250,
    onError: "skip",
  });
  const second = new OrderedStage(Holds, 1, {
    name: "holds",
    args: [handshake.words],
  });
  first.link(second);
  // Records of 30 KB on 16 KiB rings travel in fragments.
  const pipe = new Pipeline<Frame, Frame>(first, { ringBytes: 16384 });
  await guarded(pipe, async () => {
    const producer = (async () => {
      for (let id = 0; id < 40; id++) {
        await pipe.put({ id, payload: new Uint8Array(30_000).fill(id) });
      }
      await pipe.put(null);
    })();
    const reading = collect(pipe.results());
    await handshake.reached();
    // Held far longer than the first stage's taskTimeout, while its task
    // waits in putResult() for room.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    handshake.go();
    const { values, error } = await reading;
    await producer.catch(() => {});
    assert.equal(error, undefined, `the reader failed: ${error}`);
    const bad = values.filter((frame) =>
      frame.payload.length !== 30_000 || frame.payload[29_999] !== frame.id
    );
    assert.deepEqual(
      {
        ids: values.map((frame) => frame.id),
        bad: bad.length,
        skipped: first.skipped,
      },
      { ids: range(40).flatMap((id) => [id, id]), bad: 0, skipped: 0 },
    );
  });
});
