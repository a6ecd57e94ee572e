/**
 * The stage option `retry` and the one crash budget (issue 26): retried
 * throws, rejections, timeouts and lost workers, in ordered and unordered
 * stages; `when`; the backoff; quarantined poison tasks; the figures.
 *
 * The tasks count their attempts in shared memory (`Flaky`'s first
 * argument), so that attempts on different workers add up.
 */

import assert from "node:assert/strict";
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  StageError,
  type StageOptions,
  UnorderedStage,
} from "../mod.ts";
import { Retries } from "../lib/worker_thread/retries.ts";
import { within } from "./support/bounded.ts";

/**
 * What attempt n (0-based) of task x does: `plan[x][n]`, or the plan's last
 * entry past its end: "ok", "throw", "reject", "permanent" (throws an error
 * `when` refuses), "close", "exit", "hang" (awaits for ever), "spin" (a
 * synchronous 600 ms). `times` gets when each attempt started (ms).
 */
class Flaky extends OrderedWorker<number, number> {
  counts: Int32Array;
  times: Float64Array;
  plan: Record<number, string[]>;
  initDeaths: number[];
  constructor(
    counts: SharedArrayBuffer,
    plan: Record<number, string[]>,
    initDeaths: number[] = [],
  ) {
    super();
    this.counts = new Int32Array(counts, 0, 64);
    this.times = new Float64Array(counts, 256, 64 * 8);
    this.plan = plan;
    this.initDeaths = initDeaths;
  }
  override doInit(): void {
    // The workers started so far, this one included, in word 63.
    const inits = Atomics.add(this.counts, 63, 1) + 1;
    if (this.initDeaths.includes(inits)) Deno.exit(3);
  }
  override doTask(x: number): number | Promise<number> {
    const n = Atomics.add(this.counts, x, 1);
    if (n < 8) {
      this.times[x * 8 + n] = performance.timeOrigin + performance.now();
    }
    const steps = this.plan[x] ?? ["ok"];
    const step = steps[Math.min(n, steps.length - 1)];
    const fail = (what: string) =>
      new Error(`task ${x} attempt ${n + 1} ${what}`);
    switch (step) {
      case "throw":
        throw fail("throws");
      case "permanent":
        throw fail("permanent");
      case "reject":
        return new Promise((_, reject) =>
          setTimeout(() => reject(fail("rejects")), 1)
        );
      case "close":
        (globalThis as unknown as { close(): void }).close();
        break;
      case "exit":
        Deno.exit(1);
        break;
      case "hang":
        return new Promise(() => {});
      case "spin": {
        const end = performance.now() + 600;
        while (performance.now() < end) { /* a synchronous overrun */ }
        break;
      }
    }
    return new Promise((resolve) => setTimeout(() => resolve(x), 1));
  }
}

interface Run {
  results: number[];
  errors: StageError[];
  counts: Int32Array;
  times: Float64Array;
  pipe: Pipeline<number, number>;
}

/** Runs tasks 0 to `tasks - 1` through one Flaky stage; bounded. */
async function run(
  ordered: boolean,
  size: number,
  tasks: number,
  plan: Record<number, string[]>,
  options: StageOptions,
  initDeaths: number[] = [],
): Promise<Run> {
  const shared = new SharedArrayBuffer(256 + 64 * 8 * 8);
  const errors: StageError[] = [];
  const all: StageOptions = {
    name: "flaky",
    args: [shared, plan, initDeaths],
    onError: (error) => {
      errors.push(error);
    },
    ...options,
  };
  const stage = ordered
    ? new OrderedStage(Flaky, size, all)
    : new UnorderedStage(Flaky, size, all);
  const pipe = new Pipeline<number, number>(stage);
  try {
    const results = await within(
      (async () => {
        await pipe.feed(Array.from({ length: tasks }, (_, i) => i));
        const results = await Array.fromAsync(pipe);
        await pipe.done;
        return results;
      })(),
      "the run",
      30_000,
    );
    return {
      results,
      errors,
      counts: new Int32Array(shared, 0, 64),
      times: new Float64Array(shared, 256, 64 * 8),
      pipe,
    };
  } finally {
    pipe.terminate();
  }
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

Deno.test("retry: an ordered stage retries throws and rejections and keeps task order; an unordered one lets later results go", async () => {
  const plan = { 0: ["throw", "ok"], 3: ["reject", "reject", "ok"] };
  const retry = { attempts: 3, delayMs: 500, jitter: 0 };
  const ordered = await run(true, 1, 6, plan, { retry, concurrency: 4 });
  assert.deepEqual(ordered.results, range(6));
  assert.deepEqual([...ordered.counts.slice(0, 6)], [2, 1, 1, 3, 1, 1]);
  assert.deepEqual(ordered.errors, []);
  // Task 0 waits 500 ms for its retry, task 3 500 + 1000: the others go by.
  const unordered = await run(false, 1, 6, plan, { retry, concurrency: 4 });
  assert.deepEqual(unordered.results, [1, 2, 4, 5, 0, 3]);
  const stats = unordered.pipe.stats().stages[0]!;
  assert.equal(stats.retries, 3);
  assert.deepEqual(
    stats.retried.map(({ task, attempts }) => [task, attempts]),
    [[3, 3], [0, 2]],
  );
  assert.equal(stats.workers[0]!.retries, 3);
});

Deno.test("retry: several workers of one worker at a time each keep an ordered stage's order while a task is retried", async () => {
  const plan = { 2: ["throw", "ok"], 5: ["reject", "ok"] };
  for (const size of [1, 3]) {
    const { results, counts } = await run(true, size, 12, plan, {
      retry: { attempts: 2, delayMs: 20 },
    });
    assert.deepEqual(results, range(12));
    assert.equal(counts[2], 2);
    assert.equal(counts[5], 2);
  }
});

Deno.test("retry: after the last attempt onError decides, with every attempt's error", async () => {
  const plan = { 1: ["throw"] };
  const skipped = await run(true, 2, 4, plan, {
    retry: { attempts: 3, delayMs: 1 },
  });
  assert.deepEqual(skipped.results, [0, 2, 3]);
  assert.equal(skipped.errors.length, 1);
  const error = skipped.errors[0]!;
  assert.equal(error.task, 1);
  assert.match(error.message, /after 3 attempts/);
  assert.deepEqual(
    error.attempts.map((e) => (e as Error).message),
    [1, 2, 3].map((n) => `task 1 attempt ${n} throws`),
  );
  assert.equal(error.cause, error.attempts[2]);
  // Under "fail", the pipeline fails with that error.
  await assert.rejects(
    run(false, 1, 4, plan, { onError: "fail", retry: 2 }),
    (error: unknown) => {
      assert.ok(error instanceof StageError);
      assert.equal(error.task, 1);
      assert.equal(error.attempts.length, 2);
      return true;
    },
  );
});

Deno.test("retry: when() picks the failures to retry, with the attempt's number", async () => {
  const plan = { 1: ["permanent"], 2: ["throw", "throw", "throw", "ok"] };
  const { results, errors, counts } = await run(true, 1, 4, plan, {
    retry: {
      attempts: 5,
      delayMs: 1,
      when: (error: unknown, attempt: number) =>
        !String((error as Error).message).includes("permanent") && attempt < 3,
    },
  });
  // Task 1 is not retried; task 2 is retried after attempts 1 and 2 only.
  assert.deepEqual(results, [0, 3]);
  assert.deepEqual([...counts.slice(0, 4)], [1, 1, 3, 1]);
  assert.deepEqual(errors.map((e) => [e.task, e.attempts.length]), [[1, 1], [
    2,
    3,
  ]]);
});

Deno.test("retry: the delays grow by factor from delayMs up to maxDelayMs, moved by up to jitter", () => {
  const config = {
    attempts: 9,
    delayMs: 100,
    maxDelayMs: 500,
    factor: 2,
    jitter: 0.2,
    when: null,
  };
  assert.deepEqual(
    [1, 2, 3, 4, 5].map((attempt) => Retries.delayMs(config, attempt, 0.5)),
    [100, 200, 400, 500, 500],
  );
  assert.equal(Retries.delayMs(config, 1, 0), 80);
  assert.equal(Retries.delayMs(config, 1, 1), 120);
  assert.equal(Retries.delayMs(config, 4, 0.999999) <= 600, true);
});

Deno.test("retry: a task's attempts start at least the backoff's delays apart, in order", async () => {
  const { results, times } = await run(true, 1, 2, {
    0: ["throw", "throw", "throw", "ok"],
  }, {
    retry: { attempts: 4, delayMs: 100, factor: 2, jitter: 0 },
  });
  assert.deepEqual(results, [0, 1]);
  const gaps = [1, 2, 3].map((n) => times[n]! - times[n - 1]!);
  // Timers never fire early (1 ms of clock rounding aside); the upper bound
  // only catches a delay that was never applied as set.
  [100, 200, 400].forEach((delay, i) => {
    assert.ok(gaps[i]! >= delay - 1, `gap ${i + 1}: ${gaps[i]} ms < ${delay}`);
    assert.ok(gaps[i]! < delay + 5000, `gap ${i + 1}: ${gaps[i]} ms`);
  });
});

Deno.test("retry: taskTimeout counts per attempt, for an await (same worker) and a synchronous overrun (a new worker)", async () => {
  const awaited = await run(true, 1, 3, { 1: ["hang", "ok"] }, {
    retry: { attempts: 2, delayMs: 1 },
    taskTimeout: 300,
    concurrency: 2,
  });
  assert.deepEqual(awaited.results, [0, 1, 2]);
  assert.equal(awaited.counts[1], 2);
  const spun = await run(true, 1, 3, { 1: ["spin", "ok"] }, {
    retry: { attempts: 2, delayMs: 1 },
    taskTimeout: 150,
  });
  assert.deepEqual(spun.results, [0, 1, 2]);
  assert.equal(spun.counts[1], 2);
  const stats = spun.pipe.stats().stages[0]!;
  assert.equal(stats.workers[0]!.restarts, 1);
  assert.equal(stats.retries, 1);
  assert.deepEqual(stats.retried.map((t) => [t.task, t.attempts]), [[1, 2]]);
});

Deno.test("retry: a task lost with its worker is retried by the worker that takes its place, in order, with restart or without", async () => {
  for (const restart of [false, true]) {
    for (const concurrency of [1, 3]) {
      const { results, counts, pipe } = await run(
        true,
        2,
        10,
        { 4: ["close", "ok"], 7: ["exit", "ok"] },
        { retry: { attempts: 2, delayMs: 1 }, restart, concurrency },
      );
      assert.deepEqual(results, range(10));
      assert.equal(counts[4], 2);
      assert.equal(counts[7], 2);
      const stats = pipe.stats().stages[0]!;
      assert.equal(stats.skipped, 0);
      assert.equal(stats.retries, 2);
      assert.match(
        pipe.insights(),
        /tasks that needed retries \(by sequence number\): 4 \(2 attempts/,
      );
    }
  }
});

Deno.test("retry: a fork's branches each get every result in order while a task is retried", async () => {
  const shared = new SharedArrayBuffer(256 + 64 * 8 * 8);
  const first = new OrderedStage(Flaky, 2, {
    args: [shared, { 2: ["throw", "ok"], 3: ["exit", "ok"] }],
    retry: { attempts: 2, delayMs: 50 },
  });
  const a = new OrderedStage((x: number) => x * 10);
  const b = new UnorderedStage((x: number) => x * 100);
  first.link(a).link(b);
  const pipe = new Pipeline<number, number>(first);
  try {
    await within(
      (async () => {
        await pipe.feed(range(6));
        const [fromA, fromB] = await Promise.all([
          Array.fromAsync(a.results()),
          Array.fromAsync(b.results()),
        ]);
        assert.deepEqual(fromA, range(6).map((x) => x * 10));
        assert.deepEqual(
          fromB.sort((x, y) => x - y),
          range(6).map((x) => x * 100),
        );
        await pipe.done;
      })(),
      "the fork",
      30_000,
    );
  } finally {
    pipe.terminate();
  }
});

Deno.test("crash budget: a poison task that crashes every worker is quarantined after crashBudget losses, and the run completes", async () => {
  // With concurrency, the tasks the poison task's worker holds beside it
  // are run again, neither charged nor counted: only the poison is
  // quarantined.
  for (
    const [ordered, concurrency] of [[true, 1], [false, 1], [true, 4]] as const
  ) {
    const { results, errors, counts, pipe } = await run(
      ordered,
      2,
      8,
      { 3: ["close"] },
      { retry: { attempts: 10, delayMs: 1 }, crashBudget: 2, concurrency },
    );
    const expected = range(8).filter((x) => x !== 3);
    assert.deepEqual(
      ordered ? results : results.sort((a, b) => a - b),
      expected,
    );
    assert.equal(counts[3], 2);
    assert.equal(errors.length, 1);
    assert.equal(errors[0]!.task, 3);
    assert.match(errors[0]!.message, /quarantined.*crashBudget is 2/);
    assert.equal(errors[0]!.attempts.length, 2);
    const stats = pipe.stats().stages[0]!;
    assert.equal(stats.quarantined, 1);
    assert.equal(stats.skipped, 1);
    assert.match(pipe.insights(), /1 quarantined/);
  }
  // Under "fail", the quarantined task fails the pipeline.
  await assert.rejects(
    run(true, 1, 5, { 2: ["exit"] }, { onError: "fail", retry: 5 }),
    /quarantined: it has cost the stage 3 workers/,
  );
});

Deno.test("crash budget: three different tasks that each crash a worker are three skipped tasks, not a reason to give up the stage", async () => {
  const { results, errors, pipe } = await run(
    true,
    1,
    8,
    { 1: ["close"], 2: ["exit"], 3: ["close"], 5: ["exit"] },
    { restart: true },
  );
  assert.deepEqual(results, [0, 4, 6, 7]);
  assert.deepEqual(errors.map((e) => e.task), [1, 2, 3, 5]);
  assert.equal(pipe.stats().stages[0]!.workers[0]!.restarts, 4);
});

Deno.test("crash budget: a replacement lost in doInit() hands its tasks on, so an ordered stage does not wait for them for ever", async () => {
  // The third worker to start (the first replacement) exits in doInit().
  for (const retry of [1, 3]) {
    const { results, errors, counts } = await run(
      true,
      2,
      6,
      { 2: ["exit", "ok"] },
      { restart: true, retry },
      [3],
    );
    assert.deepEqual(results, retry === 1 ? [0, 1, 3, 4, 5] : range(6));
    assert.equal(errors.length, retry === 1 ? 1 : 0);
    assert.equal(counts[63], 4);
  }
});

Deno.test("retry and crashBudget options are checked, naming the option and its value", () => {
  const make = (options: unknown) => () =>
    new OrderedStage((x: number) => x, 1, options as StageOptions);
  assert.throws(make({ retry: 0 }), RangeError);
  assert.throws(
    make({ retry: 1.5 }),
    /'options\.retry' must be a positive integer.*1\.5/,
  );
  assert.throws(
    make({ retry: "3" }),
    /'options\.retry' must be a number of attempts or an object.*"3"/,
  );
  assert.throws(
    make({ retry: { attempts: 0 } }),
    /'options\.retry\.attempts'.*got 0/,
  );
  assert.throws(
    make({ retry: { delayMs: -1 } }),
    /'options\.retry\.delayMs'.*got -1/,
  );
  assert.throws(
    make({ retry: { delayMs: 100, maxDelayMs: 50 } }),
    /'options\.retry\.maxDelayMs'.*at least delayMs \(100\).*got 50/,
  );
  assert.throws(
    make({ retry: { factor: 0.5 } }),
    /'options\.retry\.factor'.*got 0\.5/,
  );
  assert.throws(
    make({ retry: { jitter: 2 } }),
    /'options\.retry\.jitter'.*got 2/,
  );
  assert.throws(
    make({ retry: { when: 1 } }),
    /'options\.retry\.when' must be a function.*got 1/,
  );
  assert.throws(
    make({ retry: { tries: 3 } }),
    /'options\.retry\.tries' is not a retry option/,
  );
  assert.throws(
    make({ retry: { when: Math.max } }),
    /'options\.retry\.when' must be a plain function/,
  );
  // A remote stage retries too (tests/jetstream_retry_test.ts).
  const cluster = { openRun: () => undefined };
  make({ cluster, retry: 2 })();
  make({ cluster, crashBudget: 2 })();
  assert.throws(
    make({ crashBudget: 0 }),
    /'options\.crashBudget' must be a positive integer.*got 0/,
  );
  assert.throws(make({ crashBudget: "2" }), RangeError);
  for (
    const bad of [{ retry: 0 }, { retry: { jitter: -0.1 } }, {
      crashBudget: 1.5,
    }]
  ) {
    assert.throws(make(bad), RangeError);
  }
  for (const bad of [{ retry: "3" }, { retry: { delayMs: "1" } }]) {
    assert.throws(make(bad), TypeError);
  }
  make({
    retry: {
      attempts: 2,
      maxDelayMs: Infinity,
      when(e: unknown) {
        return !!e;
      },
    },
    crashBudget: 1,
  })();
});
