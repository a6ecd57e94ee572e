/**
 * Attacks on the stage option `retry` and the crash budget (issue 26), as a
 * user would make them: each test is a defect found by review, or a check
 * that a corner holds.
 */

import assert from "node:assert/strict";
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  type StageError,
  type StageOptions,
  UnorderedStage,
} from "../mod.ts";
import { within } from "./support/bounded.ts";

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** Runs `tasks` through `stage`; bounded. */
async function drain<I, O>(
  pipe: Pipeline<I, O>,
  tasks: I[],
  ms = 30_000,
): Promise<O[]> {
  try {
    return await within(
      (async () => {
        await pipe.feed(tasks);
        const results = await Array.fromAsync(pipe);
        await pipe.done;
        return results;
      })(),
      "the run",
      ms,
    );
  } finally {
    pipe.terminate();
  }
}

/** Attempt 1 of each task in `fails` throws (counted in shared memory). */
class FailOnce extends OrderedWorker<number, number> {
  counts: Int32Array;
  every: number;
  constructor(counts: SharedArrayBuffer, every: number) {
    super();
    this.counts = new Int32Array(counts);
    this.every = every;
  }
  override doTask(x: number): number {
    const n = Atomics.add(this.counts, x, 1);
    if (n === 0 && x % this.every === 0) throw new Error(`task ${x} flakes`);
    return x;
  }
}

Deno.test("retry attack: 10k tasks, a tenth failing once: every result, counts add up, retries exact", async () => {
  const n = 10_000;
  const shared = new SharedArrayBuffer(4 * n);
  const pipe = new Pipeline<number, number>(
    new UnorderedStage(FailOnce, 2, {
      args: [shared, 10],
      retry: { attempts: 2, delayMs: 0, jitter: 0 },
      concurrency: 3,
    }),
  );
  const results = await drain(pipe, range(n));
  assert.deepEqual(results.sort((a, b) => a - b), range(n));
  const s = pipe.stats().stages[0]!;
  assert.equal(s.received, n);
  assert.equal(s.tasks + s.skipped, s.received);
  assert.equal(s.skipped, 0);
  assert.equal(s.retries, n / 10);
  assert.equal(
    s.workers.reduce((sum, w) => sum + w.retries, 0),
    n / 10,
  );
  const counts = new Int32Array(shared);
  assert.equal(counts.reduce((a, b) => a + b, 0), n + n / 10);
});

/** Marks its input, then throws on its first attempt. */
class Mutates extends OrderedWorker<{ x: number; seen: boolean }, boolean> {
  counts: Int32Array;
  constructor(counts: SharedArrayBuffer) {
    super();
    this.counts = new Int32Array(counts);
  }
  override doTask(task: { x: number; seen: boolean }): boolean {
    const before = task.seen;
    task.seen = true;
    if (Atomics.add(this.counts, task.x, 1) === 0) throw new Error("again");
    return before;
  }
}

Deno.test("retry attack: an attempt does not see what an earlier attempt did to its task", async () => {
  const shared = new SharedArrayBuffer(64);
  const pipe = new Pipeline<{ x: number; seen: boolean }, boolean>(
    new OrderedStage(Mutates, 1, {
      args: [shared],
      retry: { attempts: 2, delayMs: 0 },
    }),
  );
  const results = await drain(
    pipe,
    range(4).map((x) => ({ x, seen: false })),
  );
  assert.deepEqual(results, [false, false, false, false]);
});

/** A task larger than the rings: attempt 1 throws. */
class Big extends OrderedWorker<Uint8Array, number> {
  counts: Int32Array;
  constructor(counts: SharedArrayBuffer) {
    super();
    this.counts = new Int32Array(counts);
  }
  override doTask(task: Uint8Array): number {
    const first = Atomics.add(this.counts, task[0]!, 1) === 0;
    task[1] = 99;
    if (first) throw new Error("again");
    let sum = 0;
    for (let i = 2; i < task.length; i++) sum += task[i]!;
    return sum;
  }
}

Deno.test("retry attack: tasks larger than the ring (fragmented records) are retried whole", async () => {
  const shared = new SharedArrayBuffer(64);
  const size = 20_000;
  const tasks = range(3).map((x) => {
    const bytes = new Uint8Array(size).fill(1);
    bytes[0] = x;
    bytes[1] = 0;
    return bytes;
  });
  const pipe = new Pipeline<Uint8Array, number>(
    new OrderedStage(Big, 2, {
      args: [shared],
      retry: { attempts: 2, delayMs: 0 },
    }),
    { ringBytes: 4096 },
  );
  const results = await drain(pipe, tasks);
  assert.deepEqual(results, [size - 2, size - 2, size - 2]);
});

/** putResult() twice, after an await. */
class PutsLate extends OrderedWorker<number, number> {
  override async doTask(x: number): Promise<number> {
    await new Promise((resolve) => setTimeout(resolve, 1));
    this.putResult(x * 10);
    return x * 10 + 1;
  }
}

Deno.test("retry attack: putResult() after an await works with retry as without (one task at a time)", async () => {
  for (const retry of [1, 2]) {
    const errors: StageError[] = [];
    const pipe = new Pipeline<number, number>(
      new OrderedStage(PutsLate, 1, {
        retry,
        onError: (error) => {
          errors.push(error);
        },
      }),
    );
    const results = await drain(pipe, [1, 2]);
    assert.deepEqual(errors.map((e) => e.message), [], `retry ${retry}`);
    assert.deepEqual(results, [10, 11, 20, 21], `retry ${retry}`);
  }
});

Deno.test("retry attack: a when() that throws ends the retries; what it threw is that attempt's error", async () => {
  const errors: StageError[] = [];
  const pipe = new Pipeline<number, number>(
    new OrderedStage(
      (x: number) => {
        if (x === 1) throw new Error("task fails");
        return x;
      },
      1,
      {
        retry: {
          attempts: 5,
          delayMs: 0,
          when: () => {
            throw new RangeError("when broke");
          },
        },
        onError: (error) => {
          errors.push(error);
        },
      },
    ),
  );
  assert.deepEqual(await drain(pipe, [0, 1, 2]), [0, 2]);
  assert.equal(errors.length, 1);
  assert.equal(errors[0]!.attempts.length, 1);
  assert.match(String(errors[0]!.cause), /when broke/);
});

/** Task 1 always throws; the others wait a moment. */
const alwaysOne = async (x: number) => {
  await new Promise((resolve) => setTimeout(resolve, 1));
  if (x === 1) throw new Error("never");
  return x;
};

Deno.test("retry attack: terminate() during a retry's delay ends the run at once", async () => {
  const pipe = new Pipeline<number, number>(
    new OrderedStage(alwaysOne, 1, {
      retry: { attempts: 3, delayMs: 60_000, jitter: 0 },
    }),
  );
  await pipe.feed([0, 1, 2]);
  assert.equal(await within(pipe.get(), "the first result"), 0);
  pipe.terminate();
  await within(
    pipe.done.then(() => "done", () => "failed"),
    "done after terminate()",
  );
});

Deno.test("retry attack: get({ timeout }) times out while an ordered stage waits for a retry, and the run then ends", async () => {
  const pipe = new Pipeline<number, number>(
    new OrderedStage(alwaysOne, 1, {
      retry: { attempts: 2, delayMs: 1500, jitter: 0 },
      onError: "skip",
    }),
  );
  try {
    await pipe.feed([0, 1, 2]);
    assert.equal(await within(pipe.get(), "the first result"), 0);
    await assert.rejects(
      within(pipe.get({ timeout: 50 }), "get({ timeout })"),
      (e: unknown) => !String(e).includes("a hang"),
    );
    assert.equal(await within(pipe.get(), "the third result"), 2);
    await within(pipe.done, "done");
  } finally {
    pipe.terminate();
  }
});

/**
 * Task 3 exits its worker after an await; the others wait a little and
 * succeed.
 */
class LateExit extends OrderedWorker<number, number> {
  counts: Int32Array;
  constructor(counts: SharedArrayBuffer) {
    super();
    this.counts = new Int32Array(counts);
  }
  override async doTask(x: number): Promise<number> {
    Atomics.add(this.counts, x, 1);
    await new Promise((resolve) => setTimeout(resolve, x === 3 ? 100 : 1));
    if (x === 3) Deno.exit(1);
    return x;
  }
}

Deno.test("retry attack: a poison task that crashes after an await costs only its own budget: finished tasks held behind it in order are not quarantined", async () => {
  const shared = new SharedArrayBuffer(64);
  const errors: StageError[] = [];
  const pipe = new Pipeline<number, number>(
    new OrderedStage(LateExit, 1, {
      args: [shared],
      retry: { attempts: 10, delayMs: 1 },
      crashBudget: 2,
      concurrency: 4,
      onError: (error) => {
        errors.push(error);
      },
    }),
  );
  const results = await drain(pipe, range(8));
  assert.deepEqual(errors.map((e) => e.task), [3]);
  assert.deepEqual(results, range(8).filter((x) => x !== 3));
});

Deno.test("retry attack: bad retry and crashBudget values throw naming the option and the value", () => {
  const make = (options: unknown) => () =>
    new OrderedStage((x: number) => x, 1, options as StageOptions);
  const cases: [unknown, typeof Error, RegExp][] = [
    [{ retry: { attempts: 2, delay: 5 } }, TypeError, /delay/],
    [{ retry: { attempts: NaN } }, RangeError, /retry\.attempts.*NaN/],
    [{ retry: { delayMs: -1 } }, RangeError, /retry\.delayMs.*-1/],
    [{ retry: { delayMs: 10, maxDelayMs: 5 } }, RangeError, /maxDelayMs.*5/],
    [{ retry: { factor: 0.5 } }, RangeError, /factor.*0\.5/],
    [{ retry: { jitter: 2 } }, RangeError, /jitter.*2/],
    [{ retry: { jitter: NaN } }, RangeError, /jitter.*NaN/],
    [{ retry: { when: "yes" } }, TypeError, /when.*yes/],
    [{ retry: null }, TypeError, /retry.*null/],
    [{ retry: "3" }, TypeError, /retry.*"?3/],
    [{ retry: [3] }, TypeError, /retry/],
    [{ retry: -1 }, RangeError, /retry.*-1/],
    [{ retry: Infinity }, RangeError, /retry.*Infinity/],
    [{ crashBudget: 0 }, RangeError, /crashBudget.*0/],
    [{ crashBudget: 1.5 }, RangeError, /crashBudget.*1\.5/],
    [{ crashBudget: "3" }, RangeError, /crashBudget.*"3"/],
  ];
  for (const [options, kind, message] of cases) {
    assert.throws(make(options), (e: unknown) => {
      assert.ok(e instanceof kind, `${JSON.stringify(options)}: ${e}`);
      assert.match(String(e), message);
      return true;
    });
  }
});

/** Tasks in `poison` close their worker; counts attempts and inits. */
class Poison extends OrderedWorker<number, number> {
  counts: Int32Array;
  poison: number[];
  initDeaths: number;
  constructor(counts: SharedArrayBuffer, poison: number[], initDeaths = 0) {
    super();
    this.counts = new Int32Array(counts);
    this.poison = poison;
    this.initDeaths = initDeaths;
  }
  override doInit(): void {
    if (Atomics.add(this.counts, 63, 1) < this.initDeaths) Deno.exit(2);
  }
  override doTask(x: number): number {
    Atomics.add(this.counts, x, 1);
    if (this.poison.includes(x)) {
      (globalThis as unknown as { close(): void }).close();
    }
    return x;
  }
}

Deno.test("retry attack: three poison tasks under retry are quarantined each after its own budget; the stage goes on", async () => {
  for (const ordered of [true, false]) {
    const shared = new SharedArrayBuffer(256);
    const errors: StageError[] = [];
    const options: StageOptions = {
      args: [shared, [2, 5, 9]],
      retry: { attempts: 10, delayMs: 0 },
      crashBudget: 2,
      onError: (error) => {
        errors.push(error);
      },
    };
    const pipe = new Pipeline<number, number>(
      ordered
        ? new OrderedStage(Poison, 2, options)
        : new UnorderedStage(Poison, 2, options),
    );
    const results = await drain(pipe, range(12));
    const expected = range(12).filter((x) => ![2, 5, 9].includes(x));
    assert.deepEqual(
      ordered ? results : results.sort((a, b) => a - b),
      expected,
    );
    assert.deepEqual(errors.map((e) => e.task!).sort((a, b) => a - b), [
      2,
      5,
      9,
    ]);
    const counts = new Int32Array(shared);
    assert.deepEqual([counts[2], counts[5], counts[9]], [2, 2, 2]);
    const s = pipe.stats().stages[0]!;
    assert.equal(s.quarantined, 3);
    assert.equal(s.tasks + s.skipped, s.received);
    assert.equal(
      s.workers.reduce((sum, w) => sum + w.quarantined, 0),
      3,
    );
  }
});

Deno.test("retry attack: workers that die in doInit() under retry: two deaths are survived, a place lost 3 times in a row fails the run", async () => {
  const shared = new SharedArrayBuffer(256);
  const pipe = new Pipeline<number, number>(
    new OrderedStage(Poison, 1, {
      args: [shared, [], 2],
      retry: 3,
    }),
  );
  assert.deepEqual(await drain(pipe, range(5)), range(5));
  const always = new SharedArrayBuffer(256);
  const failing = new Pipeline<number, number>(
    new OrderedStage(Poison, 1, {
      args: [always, [], 1000],
      retry: 3,
    }),
  );
  await assert.rejects(drain(failing, range(5)), (e: unknown) => {
    assert.ok(!String(e).includes("a hang"), String(e));
    return true;
  });
});

Deno.test("retry attack: a delay past setTimeout's limit (2^31 - 1 ms) waits, not fires at once", async () => {
  const shared = new SharedArrayBuffer(256);
  const pipe = new Pipeline<number, number>(
    new UnorderedStage(FailOnce, 1, {
      args: [shared, 1],
      retry: { attempts: 2, delayMs: 2 ** 31, jitter: 0 },
    }),
  );
  try {
    await pipe.feed([0]);
    const counts = new Int32Array(shared);
    await within(
      (async () => {
        while (Atomics.load(counts, 0) === 0) {
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      })(),
      "the first attempt",
    );
    // The retry is due in 24.8 days: it must not have run a moment later.
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(Atomics.load(counts, 0), 1);
  } finally {
    pipe.terminate();
  }
});

Deno.test("retry attack: 5k tasks through an ordered stage of 2 workers with concurrency, a tenth failing once, come out in order", async () => {
  const n = 5_000;
  const shared = new SharedArrayBuffer(4 * n);
  const pipe = new Pipeline<number, number>(
    new OrderedStage(FailOnce, 2, {
      args: [shared, 10],
      retry: { attempts: 2, delayMs: 1 },
      concurrency: 4,
    }),
  );
  assert.deepEqual(await drain(pipe, range(n)), range(n));
  const s = pipe.stats().stages[0]!;
  assert.equal(s.retries, n / 10);
  assert.equal(s.tasks, n);
  assert.match(pipe.insights(), /tasks that needed retries/);
});
