/**
 * Attacks on the stage option `retry` and the crash budget (issue 26), as a
 * user would make them: each test is a defect found by review, or a check
 * that a corner holds.
 */

import assert from "node:assert/strict";
import {
  FilterStage,
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

/** Task x is x KiB of byte x; its first attempt exits or spins at `bad`. */
class Grows extends OrderedWorker<Uint8Array, number> {
  counts: Int32Array;
  bad: number;
  how: string;
  constructor(counts: SharedArrayBuffer, bad: number, how: string) {
    super();
    this.counts = new Int32Array(counts);
    this.bad = bad;
    this.how = how;
  }
  override doTask(task: Uint8Array): number {
    const x = task[0]!;
    if (x === this.bad && Atomics.add(this.counts, x, 1) === 0) {
      if (this.how === "exit") Deno.exit(1);
      const end = performance.now() + 2_000;
      while (performance.now() < end) { /* overrun taskTimeout */ }
    }
    return task.length * 1000 + x;
  }
}

Deno.test("retry attack: a task lost just after its stash grew is retried with its own bytes", async () => {
  for (const how of ["exit", "spin"]) {
    const shared = new SharedArrayBuffer(256);
    const pipe = new Pipeline<Uint8Array, number>(
      new OrderedStage(Grows, 1, {
        args: [shared, 5, how],
        retry: { attempts: 2, delayMs: 0 },
        taskTimeout: how === "spin" ? 300 : undefined,
      }),
    );
    const tasks = range(7).map((x) => new Uint8Array(1024 * 2 ** x).fill(x));
    const results = await drain(pipe, tasks);
    assert.deepEqual(
      results,
      tasks.map((t) => t.length * 1000 + t[0]!),
      how,
    );
  }
});

Deno.test("retry attack: a retrying stage joined from a fork's two branches gets every task once, retries counted", async () => {
  const shared = new SharedArrayBuffer(4 * 2000);
  const a = new OrderedStage((x: number) => x, 1);
  const b = new OrderedStage((x: number) => x, 1);
  const c = new UnorderedStage((x: number) => x + 1000, 2);
  const d = new OrderedStage(FailOnce, 2, {
    args: [shared, 7],
    retry: { attempts: 2, delayMs: 1 },
    concurrency: 2,
  });
  a.link(b);
  a.link(c);
  b.link(d);
  c.link(d);
  const pipe = new Pipeline<number, number>(a);
  const results = await drain(pipe, range(300));
  const expected = [...range(300), ...range(300).map((x) => x + 1000)];
  assert.deepEqual(
    results.sort((x, y) => x - y),
    expected.sort((x, y) => x - y),
  );
  const s = pipe.stats().stages.find((stage) => stage.name === "FailOnce")!;
  assert.equal(s.retries, expected.filter((x) => x % 7 === 0).length);
});

Deno.test("retry attack: a retrying stage inside a FilterStage retries and its results come out", async () => {
  const shared = new SharedArrayBuffer(4 * 64);
  const inner = new OrderedStage(FailOnce, 1, {
    args: [shared, 2],
    retry: { attempts: 2, delayMs: 1 },
  });
  const pipe = new Pipeline<number, [number, number[]]>(
    new FilterStage<number, number>([inner], { maxTasks: 1000 }),
  );
  const results = await drain(pipe, range(20));
  assert.deepEqual(results.map(([x]) => x), range(20));
  const seen = results.flatMap(([, latest]) => latest);
  const s = pipe.stats().stages.find((stage) => stage.name === "FailOnce")!;
  assert.equal(s.retries, 10);
  assert.equal(s.tasks, 20);
  assert.ok(seen.length <= 20);
});

/** Task 1 always overruns taskTimeout synchronously (or closes its worker). */
class Overruns extends OrderedWorker<number, number> {
  counts: Int32Array;
  how: string;
  constructor(counts: SharedArrayBuffer, how: string) {
    super();
    this.counts = new Int32Array(counts);
    this.how = how;
  }
  override doTask(x: number): number {
    Atomics.add(this.counts, x, 1);
    if (x === 1 && this.how === "close") {
      (globalThis as unknown as { close(): void }).close();
    }
    if (x === 1) {
      const end = performance.now() + 1_500;
      while (performance.now() < end) { /* overrun */ }
    }
    return x;
  }
}

Deno.test("retry attack: a task that overruns taskTimeout on every worker is quarantined after crashBudget workers, below its attempts", async () => {
  const shared = new SharedArrayBuffer(64);
  const errors: StageError[] = [];
  const pipe = new Pipeline<number, number>(
    new OrderedStage(Overruns, 1, {
      args: [shared, "spin"],
      retry: { attempts: 5, delayMs: 0 },
      taskTimeout: 200,
      onError: (error) => {
        errors.push(error);
      },
    }),
  );
  assert.deepEqual(await drain(pipe, range(4)), [0, 2, 3]);
  assert.equal(new Int32Array(shared)[1], 3);
  assert.equal(errors.length, 1);
  assert.match(errors[0]!.message, /quarantined/);
  assert.equal(pipe.stats().stages[0]!.quarantined, 1);
});

Deno.test("retry attack: when() refusing a lost worker's StageError drops the task at once", async () => {
  const shared = new SharedArrayBuffer(64);
  const errors: StageError[] = [];
  const pipe = new Pipeline<number, number>(
    new OrderedStage(Overruns, 1, {
      args: [shared, "close"],
      retry: {
        attempts: 5,
        delayMs: 0,
        when: (error) => !String(error).includes("lost"),
      },
      onError: (error) => {
        errors.push(error);
      },
    }),
  );
  assert.deepEqual(await drain(pipe, range(4)), [0, 2, 3]);
  assert.equal(new Int32Array(shared)[1], 1);
  assert.equal(errors.length, 1);
  assert.equal(errors[0]!.attempts.length, 1);
});

Deno.test("retry attack: an async when() (its promise always truthy) is refused, naming the option", () => {
  assert.throws(
    () =>
      new OrderedStage((x: number) => x, 1, {
        retry: {
          attempts: 2,
          // deno-lint-ignore require-await
          when: (async () => false) as unknown as () => boolean,
        },
      }),
    (e: unknown) =>
      e instanceof TypeError && /options\.retry\.when.*async/.test(e.message),
  );
});

/** Task 0 always throws; task 1 closes its worker on its first attempt. */
class WaitsThenLost extends OrderedWorker<number, number> {
  counts: Int32Array;
  constructor(counts: SharedArrayBuffer) {
    super();
    this.counts = new Int32Array(counts);
  }
  override doTask(x: number): number {
    const n = Atomics.add(this.counts, x, 1);
    if (x === 0) throw new Error(`task 0 attempt ${n + 1}`);
    if (x === 1 && n === 0) {
      (globalThis as unknown as { close(): void }).close();
    }
    return x;
  }
}

Deno.test("retry attack: a task waiting for its retry when another task loses the worker gets no more than its attempts", async () => {
  const shared = new SharedArrayBuffer(64);
  const errors: StageError[] = [];
  const pipe = new Pipeline<number, number>(
    new OrderedStage(WaitsThenLost, 1, {
      args: [shared],
      retry: { attempts: 2, delayMs: 300, jitter: 0 },
      concurrency: 2,
      onError: (error) => {
        errors.push(error);
      },
    }),
  );
  assert.deepEqual(await drain(pipe, [0, 1]), [1]);
  assert.equal(errors.length, 1);
  assert.equal(new Int32Array(shared)[0], 2, "task 0's tries");
  assert.equal(errors[0]!.attempts.length, 2);
});
