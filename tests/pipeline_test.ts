import assert from "node:assert/strict";
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  PipelineClosedError,
  Stage,
  StageError,
  UnorderedStage,
  UnorderedWorker,
} from "../mod.ts";
import {
  hangGuard,
  isPending,
  release,
  sharedWords,
  waitUntilAtLeast,
  waitUntilChanged,
} from "./fixtures/guard.ts";
import { defaultSpin, SPIN } from "../lib/main_thread/options.ts";
import { ringPool } from "../lib/main_thread/wiring.ts";

// Task functions and worker classes are shipped to the workers by their
// source, so each one below is self-contained: it uses only globals, its
// parameters and the package's worker classes.

/** Returns its task after an uneven pause (0 to 6 ms), so workers finish out of order. */
async function unevenEcho(task: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, (task * 7919) % 7));
  return task;
}

/** Returns its task after an uneven busy loop, never yielding the thread. */
function busyEcho(task: number): number {
  const end = performance.now() + ((task * 104729) % 5) / 2;
  while (performance.now() < end) {
    // Busy: the worker cannot take another task meanwhile.
  }
  return task;
}

/** Returns its task unchanged. */
function echo<T>(task: T): T {
  return task;
}

/**
 * Holds task 0 until the test releases shared word 0; reports on word 1 when
 * task 0 has started, and counts the other tasks run on word 2. The wait is
 * bounded (5 s) so a bug cannot hang a worker.
 */
class HoldFirst extends OrderedWorker<number, number | string> {
  words: Int32Array;

  constructor(words: Int32Array) {
    super();
    this.words = words;
  }

  doTask(task: number): number | string {
    if (task === 0) {
      Atomics.store(this.words, 1, 1);
      Atomics.notify(this.words, 1);
      if (Atomics.wait(this.words, 0, 0, 5_000) === "timed-out") {
        return "task 0 was never released";
      }
    } else {
      Atomics.add(this.words, 2, 1);
      Atomics.notify(this.words, 2);
    }
    return task;
  }
}

/** `HoldFirst` for an unordered stage. */
class UnorderedHoldFirst extends UnorderedWorker<number, number | string> {
  words: Int32Array;

  constructor(words: Int32Array) {
    super();
    this.words = words;
  }

  doTask(task: number): number | string {
    if (task === 0) {
      Atomics.store(this.words, 1, 1);
      Atomics.notify(this.words, 1);
      if (Atomics.wait(this.words, 0, 0, 5_000) === "timed-out") {
        return "task 0 was never released";
      }
    }
    return task;
  }
}

/**
 * Holds task `hold` until every later task (up to `total`) has run in another
 * worker; counts later tasks on shared word 0. Gives up after 5 s.
 */
class HoldUntilLaterDone extends OrderedWorker<number, number | string> {
  words: Int32Array;
  hold: number;
  total: number;

  constructor(words: Int32Array, hold: number, total: number) {
    super();
    this.words = words;
    this.hold = hold;
    this.total = total;
  }

  doTask(task: number): number | string {
    if (task === this.hold) {
      Atomics.store(this.words, 1, 1);
      Atomics.notify(this.words, 1);
      // The worker may hold up to 15 fast tasks it claimed with this one (a
      // stage of several workers claims at most 16 at once; see README).
      const later = this.total - this.hold - 1 - 15;
      const deadline = Date.now() + 5_000;
      for (;;) {
        const done = Atomics.load(this.words, 0);
        if (done >= later) break;
        const left = deadline - Date.now();
        if (
          left <= 0 ||
          Atomics.wait(this.words, 0, done, left) === "timed-out"
        ) {
          return `task ${task} waited in vain: only ${
            Atomics.load(this.words, 0)
          } of the ${later} later tasks ran meanwhile`;
        }
      }
    } else if (task > this.hold) {
      Atomics.add(this.words, 0, 1);
      Atomics.notify(this.words, 0);
    }
    return task;
  }
}

/** Puts `task.i` for i below task % 4 (after uneven pauses), then returns `task.end`. */
class Spreader extends OrderedWorker<number, string> {
  async doTask(task: number): Promise<string> {
    for (let i = 0; i < task % 4; i++) {
      await new Promise((resolve) => setTimeout(resolve, (task * 31 + i) % 3));
      this.putResult(`${task}.${i}`);
    }
    return `${task}.end`;
  }
}

/** Returns an object whose getter puts another result while the object is copied. */
class GetterPutter extends OrderedWorker<number, unknown> {
  doTask(task: number): unknown {
    return Object.defineProperty({ task }, "note", {
      get: () => {
        this.putResult({ inner: task });
        return "copied";
      },
      enumerable: true,
    });
  }
}

/** The results `Spreader` puts for tasks 0 to n - 1, in order. */
function spread(n: number): string[] {
  const expected: string[] = [];
  for (let task = 0; task < n; task++) {
    for (let i = 0; i < task % 4; i++) expected.push(`${task}.${i}`);
    expected.push(`${task}.end`);
  }
  return expected;
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

function byNumber(a: number, b: number): number {
  return a - b;
}

// ---- put, get, results ----

Deno.test("Pipeline.put() resolves and Pipeline.get() returns results in order, then null after the stop", async () => {
  await using pipe = new Pipeline<number, number>(
    new OrderedStage((x: number) => x + 1, 2),
  );
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 5; i++) assert.equal(await pipe.put(i), undefined);
  await pipe.put(null);
  const results = [];
  for (let i = 0; i < 5; i++) results.push(await pipe.get());
  assert.deepEqual(results, [1, 2, 3, 4, 5]);
  assert.equal(await pipe.get(), null);
  assert.equal(await pipe.get(), null);
  await pipe.done;
});

Deno.test("Pipeline.results() yields ordered results after the stop request", async () => {
  const first = new OrderedStage((x: number) => x + 1, 3);
  const second = new OrderedStage((x: number) => x * 2, 2);
  first.link(second);
  await using pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 10; i++) pipe.put(i);
  pipe.put(null);
  const results = [];
  for await (const result of pipe.results()) results.push(result);
  assert.deepEqual(results, range(10).map((i) => (i + 1) * 2));
  await pipe.done;
});

Deno.test("Pipeline[Symbol.asyncIterator] ends once the stop has drained", async () => {
  await using pipe = new Pipeline<number, number>(
    new UnorderedStage((x: number) => x * x, 2),
  );
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 6; i++) pipe.put(i);
  pipe.put(null);
  const results = [];
  for await (const result of pipe) results.push(result);
  assert.deepEqual(results.sort(byNumber), [0, 1, 4, 9, 16, 25]);
  assert.equal(await pipe.get(), null);
  await pipe.done;
});

Deno.test("Pipeline.close() is the stop request, like put(null)", async () => {
  await using pipe = new Pipeline<number, number>(new OrderedStage(echo, 2));
  using _guard = hangGuard(pipe);
  pipe.put(1);
  pipe.put(2);
  assert.equal(await pipe.close(), undefined);
  assert.deepEqual(await Array.fromAsync(pipe), [1, 2]);
  await pipe.done;
});

Deno.test("Pipeline.put() takes tasks in call order when not awaited, across large and small tasks", async () => {
  // Tasks larger than the ring wait for room; small ones behind them must wait too.
  const first = new OrderedStage((task: Uint8Array | number) => task, 2);
  const second = new OrderedStage(
    (task: Uint8Array | number) =>
      typeof task === "number" ? task : task.length + task[task.length - 1]!,
    2,
  );
  first.link(second);
  await using pipe = new Pipeline<Uint8Array | number, number>(first);
  using _guard = hangGuard(pipe);
  const expected: number[] = [];
  const puts: Promise<void>[] = [];
  for (let i = 0; i < 12; i++) {
    if (i % 3 === 0) {
      const big = new Uint8Array(600_000 + i).fill(i);
      puts.push(pipe.put(big));
      expected.push(big.length + i);
    } else {
      puts.push(pipe.put(i));
      expected.push(i);
    }
  }
  puts.push(pipe.put(null));
  assert.deepEqual(await Array.fromAsync(pipe), expected);
  await Promise.all(puts);
  await pipe.done;
});

Deno.test("Pipeline.put() copies a task whose getter puts another task: both arrive whole, the inner one first (as with postMessage)", async () => {
  await using pipe = new Pipeline<unknown, unknown>(
    new OrderedStage((task: unknown) => task),
  );
  using _guard = hangGuard(pipe);
  let inner: Promise<void> | undefined;
  const outer = {
    a: 1,
    get b() {
      inner ??= pipe.put({ inner: [1, 2, 3] });
      return "two";
    },
    c: [3],
  };
  await pipe.put(outer);
  await inner;
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), [
    { inner: [1, 2, 3] },
    { a: 1, b: "two", c: [3] },
  ]);
  await pipe.done;
});

Deno.test("Pipeline.put() of a task whose getter puts the stop request, or terminates, rejects with PipelineClosedError: the task does not enter after the end", async () => {
  for (const end of ["stop", "terminate"] as const) {
    await using pipe = new Pipeline<unknown, unknown>(
      new OrderedStage((task: unknown) => task),
    );
    using _guard = hangGuard(pipe);
    const task = {
      get a() {
        if (end === "stop") pipe.put(null);
        else pipe.terminate();
        return 1;
      },
    };
    await assert.rejects(pipe.put(task), PipelineClosedError, end);
    assert.deepEqual(await Array.fromAsync(pipe), [], end);
    await pipe.done;
    // Nothing entered, so nothing is left unaccounted for.
    const [stage] = pipe.stats().stages;
    assert.equal(stage!.received, 0, end);
  }
});

Deno.test("Pipeline.put() rejects with PipelineClosedError after the stop request", async () => {
  await using pipe = new Pipeline<number, number>(new OrderedStage(echo));
  using _guard = hangGuard(pipe);
  await pipe.put(1);
  await pipe.put(null);
  await assert.rejects(pipe.put(2), PipelineClosedError);
  await assert.rejects(pipe.put(null), PipelineClosedError);
  await pipe.close(); // idempotent: the stop request is already in
  assert.deepEqual(await Array.fromAsync(pipe), [1]);
  await pipe.done;
});

Deno.test("Pipeline.done settles after the stop request even when no result is read", async () => {
  const first = new OrderedStage((x: number) => x + 1, 2);
  first.link(new UnorderedStage((x: number) => x * 2, 2));
  await using pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 100; i++) pipe.put(i);
  await pipe.close();
  await pipe.done;
});

// ---- ordering ----

Deno.test("OrderedStage keeps input order with 4 workers and uneven async task times", async () => {
  await using pipe = new Pipeline<number, number>(
    new OrderedStage(unevenEcho, 4),
  );
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 80; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), range(80));
  await pipe.done;
});

Deno.test("OrderedStage keeps input order with 4 workers and uneven busy tasks, over two stages", async () => {
  const first = new OrderedStage(busyEcho, 4);
  const second = new OrderedStage(unevenEcho, 4);
  first.link(second);
  await using pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 80; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), range(80));
  await pipe.done;
});

Deno.test("OrderedStage lets other workers take later tasks while one task is slow", async () => {
  const words = sharedWords();
  const total = 40;
  await using pipe = new Pipeline<number, number | string>(
    new Stage(HoldUntilLaterDone, 4, { args: [words, 0, total] }),
  );
  using _guard = hangGuard(pipe);
  pipe.put(0);
  await waitUntilChanged(words, 1);
  for (let i = 1; i < total; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), range(total));
  await pipe.done;
});

Deno.test("OrderedStage lets other workers take later tasks while a task in a stream of fast tasks is slow", async () => {
  // Task 300 waits until all but 15 of tasks 301 to 599 have run: only other
  // workers can run them, so no more than the claim window (16 tasks, the
  // slow one included) may be held back behind the slow task.
  const words = sharedWords();
  const total = 600;
  await using pipe = new Pipeline<number, number | string>(
    new Stage(HoldUntilLaterDone, 4, { args: [words, 300, total] }),
  );
  using _guard = hangGuard(pipe);
  for (let i = 0; i < total; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), range(total));
  await pipe.done;
});

Deno.test("UnorderedStage puts a result as soon as it is ready, before earlier slow tasks", async () => {
  const words = sharedWords();
  await using pipe = new Pipeline<number, number | string>(
    new Stage(UnorderedHoldFirst, 2, { args: [words] }),
  );
  using _guard = hangGuard(pipe);
  pipe.put(0);
  await waitUntilChanged(words, 1);
  pipe.put(1);
  assert.equal(await pipe.get(), 1);
  release(words);
  assert.equal(await pipe.get(), 0);
  await pipe.close();
  assert.equal(await pipe.get(), null);
  await pipe.done;
});

Deno.test("UnorderedStage returns every result of uneven tasks exactly once", async () => {
  const first = new UnorderedStage(unevenEcho, 4);
  first.link(new UnorderedStage(busyEcho, 3));
  await using pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 80; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual((await Array.fromAsync(pipe)).sort(byNumber), range(80));
  await pipe.done;
});

// ---- putResult and dead-ends ----

Deno.test("OrderedWorker.putResult() keeps all results of task k before any of task k + 1", async () => {
  await using pipe = new Pipeline<number, string>(new Stage(Spreader, 4));
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 40; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), spread(40));
  await pipe.done;
});

Deno.test("OrderedWorker.putResult() from a getter of a result being copied: both results arrive whole, in order", async () => {
  await using pipe = new Pipeline<number, unknown>(new Stage(GetterPutter, 2));
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 20; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(
    await Array.fromAsync(pipe),
    range(20).flatMap((task) => [{ inner: task }, { task, note: "copied" }]),
  );
  await pipe.done;
});

Deno.test("OrderedWorker.putResult() groups results across an ordered downstream stage", async () => {
  const first = new Stage(Spreader, 3);
  const second = new OrderedStage(async (x: string) => {
    await new Promise((resolve) => setTimeout(resolve, x.length % 3));
    return `<${x}>`;
  }, 4);
  first.link(second);
  await using pipe = new Pipeline<number, string>(first);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 30; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(
    await Array.fromAsync(pipe),
    spread(30).map((x) => `<${x}>`),
  );
  await pipe.done;
});

Deno.test("OrderedWorker.putResult() alone (doTask returns nothing) keeps grouping and order", async () => {
  class PutOnly extends OrderedWorker<number, string> {
    async doTask(task: number): Promise<void> {
      for (let i = 0; i < task % 3; i++) {
        await new Promise((resolve) => setTimeout(resolve, (task + i) % 3));
        this.putResult(`${task}.${i}`);
      }
    }
  }
  const first = new Stage(PutOnly, 4);
  first.link(new OrderedStage((x: string) => x, 2));
  await using pipe = new Pipeline<number, string>(first);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 40; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(
    await Array.fromAsync(pipe),
    range(40).flatMap((t) => range(t % 3).map((i) => `${t}.${i}`)),
  );
  await pipe.done;
});

Deno.test("UnorderedWorker.putResult() puts every result of every task", async () => {
  class Fanout extends UnorderedWorker<number, number> {
    doTask(task: number): number {
      for (let i = 0; i < 3; i++) this.putResult(task * 10 + i);
      return task * 10 + 3;
    }
  }
  await using pipe = new Pipeline<number, number>(new Stage(Fanout, 3));
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 25; i++) pipe.put(i);
  pipe.put(null);
  const expected = range(25).flatMap((t) =>
    [0, 1, 2, 3].map((i) => t * 10 + i)
  );
  assert.deepEqual((await Array.fromAsync(pipe)).sort(byNumber), expected);
  await pipe.done;
});

Deno.test("OrderedStage drops null and undefined results (a dead-end) and keeps the rest in order", async () => {
  const filter = new OrderedStage(async (x: number) => {
    await new Promise((resolve) => setTimeout(resolve, (x * 13) % 4));
    if (x % 2 === 1) return null;
    if (x % 3 === 0) return undefined;
    return x;
  }, 4);
  const after = new OrderedStage(unevenEcho, 3);
  filter.link(after);
  await using pipe = new Pipeline<number, number>(filter);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 60; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(
    await Array.fromAsync(pipe),
    range(60).filter((x) => x % 2 === 0 && x % 3 !== 0),
  );
  await pipe.done;
});

Deno.test("OrderedStage of 4 workers as the leaf drops null and undefined results in order", async () => {
  await using pipe = new Pipeline<number, number>(
    new OrderedStage(async (x: number) => {
      await new Promise((resolve) => setTimeout(resolve, (x * 13) % 4));
      return x % 3 === 0 ? x : x % 3 === 1 ? null : undefined;
    }, 4),
  );
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 60; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(
    await Array.fromAsync(pipe),
    range(60).filter((x) => x % 3 === 0),
  );
  await pipe.done;
});

Deno.test("UnorderedStage drops null and undefined results (a dead-end)", async () => {
  class Filter extends UnorderedWorker<number, number> {
    doTask(task: number): number | null | undefined {
      if (task % 2 === 1) return null;
      if (task % 3 === 0) return undefined;
      return task;
    }
  }
  await using pipe = new Pipeline<number, number>(new Stage(Filter, 3));
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 60; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(
    (await Array.fromAsync(pipe)).sort(byNumber),
    range(60).filter((x) => x % 2 === 0 && x % 3 !== 0),
  );
  await pipe.done;
});

Deno.test("Pipeline.results() is empty when every task is a dead-end, and the stop still passes", async () => {
  const first = new OrderedStage((_: number) => undefined, 3);
  first.link(new OrderedStage(echo, 2));
  await using pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 20; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), []);
  await pipe.done;
});

// ---- forks ----

Deno.test("Stage.link() fork sends every result to both leaves; Pipeline.results() keeps each leaf's order", async () => {
  const root = new OrderedStage(unevenEcho, 3);
  const left = new OrderedStage(
    async (x: number) => {
      await new Promise((resolve) => setTimeout(resolve, (x * 5) % 4));
      return ["left", x] as [string, number];
    },
    3,
  );
  const right = new OrderedStage(
    (x: number) => ["right", x * 10] as [string, number],
    2,
  );
  root.link(left).link(right);
  await using pipe = new Pipeline<number, [string, number]>(root);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 40; i++) pipe.put(i);
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  assert.equal(results.length, 80);
  assert.deepEqual(
    results.filter(([leaf]) => leaf === "left").map(([, x]) => x),
    range(40),
  );
  assert.deepEqual(
    results.filter(([leaf]) => leaf === "right").map(([, x]) => x),
    range(40).map((x) => x * 10),
  );
  await pipe.done;
});

Deno.test("Stage.results() reads each leaf of a two-way fork alone", async () => {
  const root = new Stage(Spreader, 2);
  const upper = new OrderedStage((x: string) => x.toUpperCase(), 3);
  const length = new OrderedStage(unevenLength, 2);
  root.link(upper);
  root.link(length);
  await using pipe = new Pipeline<number, string | number>(root);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 20; i++) pipe.put(i);
  pipe.put(null);
  const [uppers, lengths] = await Promise.all([
    Array.fromAsync(upper.results()),
    Array.fromAsync(length.results()),
  ]);
  assert.deepEqual(uppers, spread(20).map((x) => x.toUpperCase()));
  assert.deepEqual(lengths, spread(20).map((x) => x.length));
  assert.equal(await pipe.get(), null);
  await pipe.done;
});

/** The length of a string, after an uneven pause. */
async function unevenLength(x: string): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, x.length % 3));
  return x.length;
}

/** Multiplies each task by its constructor argument, after an uneven pause. */
class Times extends OrderedWorker<number, number> {
  factor: number;

  constructor(factor: number) {
    super();
    this.factor = factor;
  }

  async doTask(task: number): Promise<number> {
    await new Promise((resolve) => setTimeout(resolve, (task * 3) % 4));
    return task * this.factor;
  }
}

Deno.test("Stage.get() reads each leaf of a three-way ordered fork alone, until null", async () => {
  const root = new OrderedStage((x: number) => x + 1, 2);
  const leaves = [1, 2, 3].map((k) =>
    new Stage(Times, k + 1, { args: [k], name: `times${k}` })
  );
  for (const leaf of leaves) root.link(leaf);
  await using pipe = new Pipeline<number, number>(root);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 30; i++) pipe.put(i);
  pipe.put(null);
  const read = async (leaf: Stage<number, number>) => {
    const results = [];
    for (let r = await leaf.get(); r !== null; r = await leaf.get()) {
      results.push(r);
    }
    return results;
  };
  const perLeaf = await Promise.all(leaves.map(read));
  perLeaf.forEach((results, k) =>
    assert.deepEqual(results, range(30).map((x) => (x + 1) * (k + 1)))
  );
  assert.equal(await pipe.get(), null);
  await pipe.done;
});

Deno.test("Pipeline.results() collects every result of a three-way unordered fork", async () => {
  const root = new UnorderedStage(unevenEcho, 3);
  const a = new UnorderedStage((x: number) => `a${x}`, 2);
  const b = new UnorderedStage(async (x: number) => {
    await new Promise((resolve) => setTimeout(resolve, x % 3));
    return `b${x}`;
  }, 3);
  const c = new OrderedStage((x: number) => `c${x}`, 2);
  root.link(a).link(b).link(c);
  await using pipe = new Pipeline<number, string>(root);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 50; i++) pipe.put(i);
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  const expected = ["a", "b", "c"].flatMap((p) => range(50).map((x) => p + x));
  assert.deepEqual(results.sort(), expected.sort());
  await pipe.done;
});

Deno.test("Stage.results() reads unordered leaves alone while another leaf is read by Stage.get()", async () => {
  const root = new UnorderedStage((x: number) => x, 2);
  const a = new UnorderedStage((x: number) => -x, 2);
  const b = new UnorderedStage(unevenEcho, 3);
  const c = new OrderedStage(unevenEcho, 2);
  root.link(a).link(b).link(c);
  await using pipe = new Pipeline<number, number>(root);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 40; i++) pipe.put(i);
  pipe.put(null);
  const fromC: number[] = [];
  const [fromA, fromB] = await Promise.all([
    Array.fromAsync(a.results()),
    Array.fromAsync(b.results()),
    (async () => {
      for (let r = await c.get(); r !== null; r = await c.get()) fromC.push(r);
    })(),
  ]);
  assert.deepEqual(fromA.sort(byNumber), range(40).map((x) => -x).reverse());
  assert.deepEqual(fromB.sort(byNumber), range(40));
  assert.deepEqual(fromC.sort(byNumber), range(40));
  await pipe.done;
});

// ---- volume ----

Deno.test("Pipeline.put() takes 10 000 tasks, not awaited, before any result is read", async () => {
  const first = new OrderedStage((x: number) => x * 2, 3);
  first.link(new OrderedStage((x: number) => x + 1, 2));
  await using pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  const puts = [];
  for (let i = 0; i < 10_000; i++) puts.push(pipe.put(i));
  puts.push(pipe.put(null));
  const results = await Array.fromAsync(pipe);
  assert.equal(results.length, 10_000);
  assert.deepEqual(results, range(10_000).map((x) => x * 2 + 1));
  await Promise.all(puts);
  await pipe.done;
});

Deno.test("Pipeline.results() drains concurrently with 50 000 awaited puts", async () => {
  const first = new OrderedStage((x: number) => x + 1, 2);
  first.link(new OrderedStage((x: number) => x * 3, 2));
  await using pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  const n = 50_000;
  const produce = async () => {
    for (let i = 0; i < n; i++) await pipe.put(i);
    await pipe.put(null);
  };
  const [, results] = await Promise.all([produce(), Array.fromAsync(pipe)]);
  assert.equal(results.length, n);
  for (let i = 0; i < n; i++) {
    if (results[i] !== (i + 1) * 3) {
      assert.fail(`result ${i} is ${results[i]}, expected ${(i + 1) * 3}`);
    }
  }
  await pipe.done;
});

// ---- values ----

/** A pipeline of two identity stages: every value crosses three hops. */
function echoPipeline<T>(size = 2): Pipeline<T, T> {
  const first = new OrderedStage(echo<T>, size);
  first.link(new OrderedStage(echo<T>, size));
  return new Pipeline<T, T>(first);
}

Deno.test("Pipeline round-trips structured-cloneable values as structuredClone does", async () => {
  class Point {
    constructor(public x: number, public y: number) {}
  }
  const cyclic: Record<string, unknown> = { name: "loop" };
  cyclic.self = cyclic;
  const loopArray: unknown[] = [1];
  loopArray.push(loopArray);
  const shared = { shared: true };
  const pair = { first: shared, second: shared };
  const nullProto = Object.create(null);
  nullProto.a = 1;
  const values: unknown[] = [
    // primitives
    0,
    -0,
    1.5,
    -2147483649,
    2 ** 53,
    NaN,
    Infinity,
    -Infinity,
    true,
    false,
    undefined,
    null,
    "",
    "ascii",
    "ünïcødé ✓ 🎉 中文",
    "long ".repeat(20_000),
    0n,
    -(2n ** 100n),
    2n ** 64n + 1n,
    // arrays, with holes
    [],
    [1, "two", [3, [4]]],
    // deno-lint-ignore no-sparse-arrays
    [1, , 3],
    new Array(5),
    // deno-lint-ignore no-sparse-arrays
    [, , "last"],
    // plain objects and class instances (as plain objects)
    {},
    { a: 1, nested: { b: [1, { c: "d" }], u: undefined } },
    { 2: "two", 1: "one", z: 0, "with space": true },
    nullProto,
    new Point(1, 2),
    // built-in objects
    new Date(0),
    new Date(1_700_000_000_123),
    new Date(NaN),
    /a+b/gi,
    /[\u{1F600}-\u{1F64F}]+/dsuy,
    new Map<unknown, unknown>([[1, "a"], ["k", { v: 1 }], [{ o: 1 }, [2]]]),
    new Set<unknown>([1, "a", { s: 1 }, [1, 2]]),
    new Uint8Array([1, 2, 3]).buffer,
    new ArrayBuffer(0),
    new Int8Array([-1, 2]),
    new Uint8Array([0, 255]),
    new Uint8ClampedArray([0, 255]),
    new Int16Array([-300, 300]),
    new Uint16Array([65535]),
    new Int32Array([-(2 ** 31), 2 ** 31 - 1]),
    new Uint32Array([2 ** 32 - 1]),
    new Float32Array([1.5, -0.25]),
    new Float64Array([Math.PI, -0]),
    new BigInt64Array([-(2n ** 63n), 1n]),
    new BigUint64Array([2n ** 64n - 1n]),
    new DataView(new Uint8Array([9, 8, 7]).buffer),
    Object(1),
    Object("boxed"),
    Object(false),
    Object(7n),
    // errors
    new Error("plain"),
    new TypeError("type"),
    new RangeError("range"),
    new SyntaxError("syntax"),
    new ReferenceError("reference"),
    new EvalError("eval"),
    new URIError("uri"),
    // nested and cyclic structures
    cyclic,
    loopArray,
    pair,
    new Map<unknown, unknown>([["self", cyclic], ["list", [cyclic, shared]]]),
  ];
  await using pipe = echoPipeline<unknown>();
  using _guard = hangGuard(pipe);
  // Wrapped in an array: null is the stop request, undefined is no result.
  for (const value of values) pipe.put([value]);
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  assert.equal(results.length, values.length);
  results.forEach((result, i) => {
    assert.deepStrictEqual(result, structuredClone([values[i]]), `value ${i}`);
  });
  // Cycles and shared references stay cycles and shared references.
  const [loop] = results[values.indexOf(cyclic)] as [typeof cyclic];
  assert.equal(loop.self, loop);
  const [pairResult] = results[values.indexOf(pair)] as [typeof pair];
  assert.equal(pairResult.first, pairResult.second);
  await pipe.done;
});

/** Round-trips `errors` and checks each against structuredClone. */
async function assertErrorsRoundTrip(errors: Error[]): Promise<void> {
  await using pipe = echoPipeline<unknown>();
  using _guard = hangGuard(pipe);
  for (const error of errors) pipe.put([error]);
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  assert.equal(results.length, errors.length);
  results.forEach((result, i) => {
    const [got] = result as [Error];
    const [want] = structuredClone([errors[i]]) as [Error];
    const what = `error ${i} (${errors[i]!.name})`;
    assert.equal(Object.getPrototypeOf(got), Object.getPrototypeOf(want), what);
    assert.equal(got.name, want.name, what);
    assert.equal(got.message, want.message, what);
    assert.deepEqual(Object.keys(got), Object.keys(want), `${what}: own keys`);
    assert.deepStrictEqual(got, want, what);
  });
  await pipe.done;
}

Deno.test("Pipeline round-trips an error's cause as structuredClone does (not enumerable)", async () => {
  await assertErrorsRoundTrip([
    new RangeError("range", { cause: new Error("inner") }),
    new SyntaxError("syntax", { cause: 42 }),
    new TypeError("t", { cause: { code: "E_CODE" } }),
  ]);
});

Deno.test("Pipeline round-trips an AggregateError as structuredClone does", async () => {
  await assertErrorsRoundTrip([
    new AggregateError([new Error("a")], "aggregate"),
  ]);
});

Deno.test("Pipeline round-trips a DOMException as structuredClone does", async () => {
  await assertErrorsRoundTrip([new DOMException("aborted", "AbortError")]);
});

Deno.test("Pipeline round-trips strings with lone surrogates unchanged", async () => {
  const values = ["\uD800", "a\uDC00b", "x".repeat(80) + "\uD83D", {
    ["key\uDFFF"]: "\uD800\uD800",
  }];
  await using pipe = echoPipeline<unknown>();
  using _guard = hangGuard(pipe);
  for (const value of values) pipe.put(value);
  pipe.put(null);
  assert.deepStrictEqual(await Array.fromAsync(pipe), structuredClone(values));
  await pipe.done;
});

Deno.test("Pipeline round-trips typed arrays sharing one buffer, keeping it shared", async () => {
  const buffer = new ArrayBuffer(16);
  new Uint8Array(buffer).set(range(16));
  const value = {
    buffer,
    whole: new Uint8Array(buffer),
    part: new Uint16Array(buffer, 4, 2),
  };
  await using pipe = echoPipeline<typeof value>();
  using _guard = hangGuard(pipe);
  pipe.put(value);
  pipe.put(null);
  const [result] = await Array.fromAsync(pipe);
  const expected = structuredClone(value);
  assert.deepStrictEqual(result, expected);
  assert.equal(result!.whole.buffer, result!.buffer);
  assert.equal(result!.part.buffer, result!.buffer);
  assert.equal(result!.part.byteOffset, expected.part.byteOffset);
  await pipe.done;
});

Deno.test("Pipeline carries an array's elements but not its other properties (a documented difference from structuredClone)", async () => {
  const array: unknown[] & { label?: string } = [1, 2];
  array.label = "dropped";
  await using pipe = echoPipeline<unknown>();
  using _guard = hangGuard(pipe);
  pipe.put(array);
  pipe.put(null);
  assert.deepStrictEqual(await Array.fromAsync(pipe), [[1, 2]]);
  await pipe.done;
});

Deno.test("Pipeline.put() accepts an object with a Symbol.toStringTag, as structuredClone does", async () => {
  class Tagged {
    value = 1;
    get [Symbol.toStringTag](): string {
      return "Tagged";
    }
  }
  const value = new Tagged();
  await using pipe = echoPipeline<unknown>();
  using _guard = hangGuard(pipe);
  const put = pipe.put(value);
  pipe.put(null);
  await put;
  assert.deepStrictEqual(await Array.fromAsync(pipe), [structuredClone(value)]);
  await pipe.done;
});

Deno.test("Pipeline round-trips a 32 MiB Uint8Array through two stages", async () => {
  const size = 32 * 1024 * 1024;
  const big = new Uint8Array(size);
  for (let i = 0; i < size; i += 4096) big[i] = (i >>> 12) & 0xff;
  big[size - 1] = 0xab;
  await using pipe = echoPipeline<Uint8Array>(1);
  using _guard = hangGuard(pipe);
  pipe.put(big);
  pipe.put(new Uint8Array([1, 2, 3]));
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  assert.equal(results.length, 2);
  const [result, small] = results as [Uint8Array, Uint8Array];
  assert.ok(result instanceof Uint8Array);
  assert.equal(result.length, size);
  for (let i = 0; i < size; i++) {
    if (result[i] !== big[i]) {
      assert.fail(`byte ${i} is ${result[i]}, expected ${big[i]}`);
    }
  }
  assert.deepEqual(small, new Uint8Array([1, 2, 3]));
  await pipe.done;
});

/** Wraps `bottom` in `depth` levels of `kind` ("mix": array, object, Map, Set in turn). */
function nest(kind: string, depth: number, bottom: unknown): unknown {
  let value = bottom;
  for (let i = depth - 1; i >= 0; i--) {
    const level = kind === "mix"
      ? ["array", "object", "Map", "Set"][i % 4]
      : kind;
    value = level === "array"
      ? [value]
      : level === "object"
      ? { a: value }
      : level === "Map"
      ? new Map([[value, 1]])
      : new Set([value]);
  }
  return value;
}

/** Unwraps the levels `nest` made, without recursion; returns the bottom. */
function unnest(kind: string, depth: number, value: unknown): unknown {
  for (let i = 0; i < depth; i++) {
    const level = kind === "mix"
      ? ["array", "object", "Map", "Set"][i % 4]
      : kind;
    if (level === "array") {
      assert.ok(Array.isArray(value), `level ${i}: an array`);
      value = value[0];
    } else if (level === "object") value = (value as { a: unknown }).a;
    else {
      assert.ok(value instanceof (level === "Map" ? Map : Set), `level ${i}`);
      value = [...(value as Map<unknown, unknown>).keys()][0];
    }
  }
  return value;
}

Deno.test("Pipeline carries values nested deeper than structuredClone carries, through workers both ways", async () => {
  // structuredClone carries 2,700 (objects) to 5,000 (Sets) levels here, in
  // the main thread or a worker; every hop decodes and encodes these.
  const depth = 20_000;
  const kinds = ["array", "object", "Map", "Set", "mix"];
  await using pipe = echoPipeline<unknown>(1);
  using _guard = hangGuard(pipe);
  for (const kind of kinds) pipe.put(nest(kind, depth, kind));
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  assert.equal(results.length, kinds.length);
  kinds.forEach((kind, i) => {
    assert.equal(unnest(kind, depth, results[i]), kind);
  });
  await pipe.done;
});

Deno.test("Pipeline carries a sparse array of length 2e8 in proportion to its elements, holes kept apart from undefined", async () => {
  const sparse: unknown[] = [];
  sparse[2e8 - 1] = "last";
  sparse[3] = undefined;
  await using pipe = echoPipeline<unknown[]>(1);
  using _guard = hangGuard(pipe);
  pipe.put(sparse);
  pipe.put(null);
  const [result] = await Array.fromAsync(pipe);
  assert.equal(result!.length, 2e8);
  assert.deepEqual(Object.keys(result!), ["3", "199999999"]);
  assert.ok(3 in result! && !(2 in result!));
  await pipe.done;
});

// ---- copying and refusing values ----

Deno.test("Pipeline.put() copies the task at the call: a later mutation does not change it", async () => {
  await using pipe = echoPipeline<{ n: number; list: number[] }>();
  using _guard = hangGuard(pipe);
  const task = { n: 1, list: [1, 2] };
  const put = pipe.put(task);
  task.n = 2;
  task.list.push(3);
  await put;
  task.list.push(4);
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), [{ n: 1, list: [1, 2] }]);
  await pipe.done;
});

Deno.test("Pipeline.put() copies a task that waits for room: mutating it before the put settles does not change it", async () => {
  const words = sharedWords();
  // Tasks typed `unknown`: the test puts objects into a stage of numbers.
  await using pipe = new Pipeline<unknown, unknown>(
    new Stage(HoldFirst, 1, { args: [words], maxBacklog: 1 }),
  );
  using _guard = hangGuard(pipe);
  pipe.put(0);
  await waitUntilChanged(words, 1);
  const waiting = { n: 1 };
  pipe.put({ n: 0 });
  const put = pipe.put(waiting);
  assert.ok(await isPending(put), "the put should wait for room");
  waiting.n = 99;
  release(words);
  await put;
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), [0, { n: 0 }, { n: 1 }]);
  await pipe.done;
});

Deno.test("Pipeline.put() copies a task larger than the ring: mutating it while it is written does not change it", async () => {
  await using pipe = echoPipeline<Uint8Array>();
  using _guard = hangGuard(pipe);
  const big = new Uint8Array(3 * 1024 * 1024).fill(7);
  const put = pipe.put(big);
  big.fill(9);
  await put;
  pipe.put(null);
  const [result] = await Array.fromAsync(pipe);
  assert.equal(result!.length, big.length);
  assert.ok(result!.every((byte) => byte === 7), "the task changed after put");
  await pipe.done;
});

Deno.test("Pipeline.put() refuses a value that cannot be cloned with a DataCloneError, losing nothing else", async () => {
  await using pipe = echoPipeline<unknown>();
  using _guard = hangGuard(pipe);
  const isDataCloneError = (error: unknown) => {
    assert.ok(error instanceof DOMException, `not a DOMException: ${error}`);
    assert.equal(error.name, "DataCloneError");
    return true;
  };
  const refused = [
    () => 1,
    Symbol("s"),
    { method() {} },
    { nested: [1, { s: Symbol("deep") }] },
    new Map([["f", () => 2]]),
    new WeakMap(),
  ];
  const checks = [];
  pipe.put(0);
  for (let i = 0; i < refused.length; i++) {
    checks.push(assert.rejects(pipe.put(refused[i]), isDataCloneError));
    pipe.put(i + 1);
  }
  pipe.put(null);
  await Promise.all(checks);
  assert.deepEqual(await Array.fromAsync(pipe), range(refused.length + 1));
  await pipe.done;
});

Deno.test("Pipeline.put() refuses a task that encodes to more than 2 GiB - 1 bytes with a RangeError, losing nothing else", async () => {
  await using pipe = echoPipeline<unknown>(1);
  using _guard = hangGuard(pipe);
  pipe.put(0);
  // Never written, so the system gives these 2 GiB no memory; the encoder
  // refuses them before it copies anything.
  const refused = pipe.put(new Uint8Array(2 ** 31));
  pipe.put(1);
  pipe.put(null);
  await assert.rejects(refused, (error: unknown) => {
    assert.ok(error instanceof RangeError, `got ${String(error)}`);
    assert.match(error.message, /more than 2147483647 bytes/);
    return true;
  });
  assert.deepEqual(await Array.fromAsync(pipe), [0, 1]);
  await pipe.done;
});

// ---- backpressure: maxBacklog ----

Deno.test("Stage maxBacklog makes Pipeline.put() wait while the backlog is full", async () => {
  const words = sharedWords();
  await using pipe = new Pipeline<number, number | string>(
    new Stage(HoldFirst, 1, { args: [words], maxBacklog: 2 }),
  );
  using _guard = hangGuard(pipe);
  await pipe.put(0);
  await waitUntilChanged(words, 1);
  await pipe.put(1);
  await pipe.put(2);
  const third = pipe.put(3);
  assert.ok(await isPending(third), "a third waiting task should wait");
  release(words);
  await third;
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), [0, 1, 2, 3]);
  await pipe.done;
});

Deno.test("Stage maxBacklog: 2 on a slow root stage returns every result in order", async () => {
  await using pipe = new Pipeline<number, number>(
    new OrderedStage(unevenEcho, 2, { maxBacklog: 2 }),
  );
  using _guard = hangGuard(pipe);
  const produce = async () => {
    for (let i = 0; i < 40; i++) await pipe.put(i);
    await pipe.put(null);
  };
  const [, results] = await Promise.all([produce(), Array.fromAsync(pipe)]);
  assert.deepEqual(results, range(40));
  await pipe.done;
});

Deno.test("Stage maxBacklog: 2 after a 4-worker ordered stage returns every result in order", async () => {
  const first = new OrderedStage(unevenEcho, 4);
  const slow = new OrderedStage(unevenEcho, 1, { maxBacklog: 2 });
  first.link(slow);
  await using pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 40; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), range(40));
  await pipe.done;
});

Deno.test("Stage maxBacklog: 1 after a 2-worker ordered stage whose first task is slow returns every result", async () => {
  // Task 0 is held while the other worker finishes tasks 1 to 3; their
  // results must not take the only backlog place that task 0's result needs.
  const words = sharedWords();
  const first = new Stage(HoldFirst, 2, { args: [words] });
  const second = new OrderedStage((x: number | string) => x, 1, {
    maxBacklog: 1,
  });
  first.link(second);
  await using pipe = new Pipeline<number, number | string>(first);
  using _guard = hangGuard(pipe, 5_000);
  pipe.put(0);
  await waitUntilChanged(words, 1);
  for (let i = 1; i < 4; i++) pipe.put(i);
  pipe.put(null);
  // Task 1 has run; its result waits for a place, which it may not take
  // while the merge waits for task 0's (the other worker holds task 0).
  await waitUntilAtLeast(words, 2, 1);
  release(words);
  assert.deepEqual(await Array.fromAsync(pipe), [0, 1, 2, 3]);
  await pipe.done;
});

Deno.test("Stage maxBacklog: 2 after an unordered stage returns every result", async () => {
  const first = new UnorderedStage(unevenEcho, 3);
  const slow = new UnorderedStage(unevenEcho, 2, { maxBacklog: 2 });
  first.link(slow);
  await using pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 40; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual((await Array.fromAsync(pipe)).sort(byNumber), range(40));
  await pipe.done;
});

// ---- get: timeout and abort ----

Deno.test("Pipeline.get() timeout rejects with a TimeoutError DOMException and loses nothing", async () => {
  const words = sharedWords();
  await using pipe = new Pipeline<number, number | string>(
    new Stage(HoldFirst, 1, { args: [words] }),
  );
  using _guard = hangGuard(pipe);
  pipe.put(0);
  pipe.put(1);
  await waitUntilChanged(words, 1);
  await assert.rejects(pipe.get({ timeout: 20 }), (error: unknown) => {
    assert.ok(error instanceof DOMException);
    assert.equal(error.name, "TimeoutError");
    return true;
  });
  await assert.rejects(pipe.get({ timeout: 0 }), { name: "TimeoutError" });
  release(words);
  assert.equal(await pipe.get(), 0);
  assert.equal(await pipe.get({ timeout: 10_000 }), 1);
  pipe.put(null);
  assert.equal(await pipe.get({ timeout: 10_000 }), null);
  await pipe.done;
});

Deno.test("Pipeline.get() timeout returns a result that is already there", async () => {
  await using pipe = new Pipeline<number, number>(new OrderedStage(echo));
  using _guard = hangGuard(pipe);
  pipe.put(5);
  pipe.put(null);
  await pipe.done;
  assert.equal(await pipe.get({ timeout: 0 }), 5);
  assert.equal(await pipe.get({ timeout: 0 }), null);
});

Deno.test("Pipeline.get() signal rejects with the abort reason and loses nothing", async () => {
  const words = sharedWords();
  await using pipe = new Pipeline<number, number | string>(
    new Stage(HoldFirst, 1, { args: [words] }),
  );
  using _guard = hangGuard(pipe);
  pipe.put(0);
  await waitUntilChanged(words, 1);
  const controller = new AbortController();
  const reason = new Error("stop waiting");
  const waiting = pipe.get({ signal: controller.signal });
  controller.abort(reason);
  await assert.rejects(waiting, (error) => error === reason);
  // An aborted signal rejects at once, with its reason.
  await assert.rejects(
    pipe.get({ signal: controller.signal }),
    (error) => error === reason,
  );
  await assert.rejects(
    pipe.get({ signal: AbortSignal.timeout(10) }),
    { name: "TimeoutError" },
  );
  release(words);
  assert.equal(await pipe.get(), 0);
  await pipe.close();
  assert.equal(await pipe.get(), null);
  await pipe.done;
});

Deno.test("Stage.get() timeout on a leaf rejects with a TimeoutError and loses nothing", async () => {
  const words = sharedWords();
  const root = new Stage(HoldFirst, 1, { args: [words] });
  const leaf = new OrderedStage((x: number | string) => x, 1);
  root.link(leaf);
  await using pipe = new Pipeline<number, number | string>(root);
  using _guard = hangGuard(pipe);
  pipe.put(0);
  await waitUntilChanged(words, 1);
  await assert.rejects(leaf.get({ timeout: 10 }), { name: "TimeoutError" });
  release(words);
  assert.equal(await leaf.get(), 0);
  pipe.put(null);
  assert.equal(await leaf.get(), null);
  await pipe.done;
});

// ---- stage errors ----

Deno.test("Pipeline.get() rejects with StageError carrying stage, worker, task and cause", async () => {
  const pipe = new Pipeline<number, number>(
    new OrderedStage(
      (x: number) => {
        if (x === 2) throw new RangeError("two is not allowed");
        return x;
      },
      1,
      { name: "picky" },
    ),
  );
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 4; i++) pipe.put(i).catch(() => {});
  pipe.put(null).catch(() => {});
  const results: number[] = [];
  const error = await (async () => {
    try {
      for (;;) {
        const result = await pipe.get();
        if (result === null) return null;
        results.push(result);
      }
    } catch (error) {
      return error;
    }
  })();
  assert.ok(error instanceof StageError, `expected a StageError, got ${error}`);
  assert.equal(error.name, "StageError");
  assert.equal(error.stage, "picky");
  assert.equal(error.worker, 0);
  assert.equal(error.task, 2);
  assert.ok(error.cause instanceof RangeError);
  assert.equal(error.cause.message, "two is not allowed");
  assert.match(error.message, /picky/);
  assert.deepEqual(results, [0, 1].slice(0, results.length));
  await pipe.done;
});

Deno.test("Pipeline.results() rejects with StageError naming the failing later stage and its task", async () => {
  const first = new OrderedStage((x: number) => x * 10, 2);
  const second = new UnorderedStage(async function explode(x: number) {
    await new Promise((resolve) => setTimeout(resolve, 1));
    if (x === 70) throw { code: 7 };
    return x;
  }, 3);
  first.link(second);
  const pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 10; i++) pipe.put(i).catch(() => {});
  pipe.put(null).catch(() => {});
  await assert.rejects(Array.fromAsync(pipe.results()), (error: unknown) => {
    assert.ok(error instanceof StageError);
    assert.equal(error.stage, "explode");
    assert.equal(error.task, 7);
    assert.ok(
      typeof error.worker === "number" && error.worker >= 0 &&
        error.worker < 3,
      `worker ${error.worker}`,
    );
    assert.deepEqual(error.cause, { code: 7 });
    return true;
  });
  await pipe.done;
});

Deno.test("Pipeline.get() rejects with StageError when a task's promise rejects", async () => {
  class Failing extends OrderedWorker<number, number> {
    async doTask(task: number): Promise<number> {
      await null;
      if (task === 1) throw new TypeError("async failure");
      return task;
    }
  }
  const pipe = new Pipeline<number, number>(
    new Stage(Failing, 2, { name: "failing" }),
  );
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 3; i++) pipe.put(i).catch(() => {});
  pipe.put(null).catch(() => {});
  await assert.rejects(Array.fromAsync(pipe), (error: unknown) => {
    assert.ok(error instanceof StageError);
    assert.equal(error.stage, "failing");
    assert.equal(error.task, 1);
    assert.ok(error.cause instanceof TypeError);
    return true;
  });
  await pipe.done;
});

Deno.test("Pipeline.get() rejects with StageError when a task's result cannot be cloned", async () => {
  const pipe = new Pipeline<number, unknown>(
    new OrderedStage((x: number) => x === 1 ? () => x : x, 1, {
      name: "leaky",
    }),
  );
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 3; i++) pipe.put(i).catch(() => {});
  pipe.put(null).catch(() => {});
  await assert.rejects(Array.fromAsync(pipe), (error: unknown) => {
    assert.ok(error instanceof StageError);
    assert.equal(error.stage, "leaky");
    assert.equal(error.task, 1);
    return true;
  });
  await pipe.done;
});

for (const ordered of [true, false]) {
  const kind = ordered ? "OrderedStage" : "UnorderedStage";
  Deno.test(`${kind}: a result that encodes to more than 2 GiB - 1 bytes fails its task under onError "fail", and is skipped under "skip"`, async () => {
    for (const onError of ["fail", "skip"] as const) {
      // Never written, so the system gives these 2 GiB no memory.
      const huge = (x: number) => x === 2 ? new Uint8Array(2 ** 31) : x;
      const stage = ordered
        ? new OrderedStage(huge, 1, { name: "huge", onError })
        : new UnorderedStage(huge, 1, { name: "huge", onError });
      const pipe = new Pipeline<number, unknown>(stage);
      using _guard = hangGuard(pipe);
      for (let i = 0; i < 5; i++) pipe.put(i).catch(() => {});
      pipe.put(null).catch(() => {});
      if (onError === "fail") {
        await assert.rejects(Array.fromAsync(pipe), (error: unknown) => {
          assert.ok(error instanceof StageError, `got ${String(error)}`);
          assert.equal(error.stage, "huge");
          assert.equal(error.task, 2);
          assert.ok(error.cause instanceof RangeError);
          assert.match(error.cause.message, /more than 2147483647 bytes/);
          return true;
        });
      } else {
        const results = await Array.fromAsync(pipe) as number[];
        assert.deepEqual(results.sort(byNumber), [0, 1, 3, 4]);
        assert.equal(stage.skipped, 1);
      }
      await pipe.done;
    }
  });
}

// ---- terminate, dispose, done ----

Deno.test("Pipeline.terminate() stops a pipeline whose task never ends", async () => {
  class Forever extends OrderedWorker<number, number> {
    words: Int32Array;
    constructor(words: Int32Array) {
      super();
      this.words = words;
    }
    doTask(_task: number): number {
      Atomics.store(this.words, 1, 1);
      Atomics.notify(this.words, 1);
      for (;;) {
        // Never returns: only terminate() ends this worker.
      }
    }
  }
  const words = sharedWords();
  const pipe = new Pipeline<number, number>(
    new Stage(Forever, 2, { args: [words] }),
  );
  using _guard = hangGuard(pipe);
  await pipe.put(1);
  await waitUntilChanged(words, 1);
  pipe.terminate();
  await pipe.done;
  await assert.rejects(pipe.put(2), PipelineClosedError);
  assert.equal(await pipe.get(), null);
  pipe.terminate();
});

Deno.test("Pipeline.terminate() settles puts still waiting for room", async () => {
  const words = sharedWords();
  const pipe = new Pipeline<number, number | string>(
    new Stage(HoldFirst, 1, { args: [words], maxBacklog: 1 }),
  );
  using _guard = hangGuard(pipe);
  pipe.put(0);
  await waitUntilChanged(words, 1);
  const waiting = [pipe.put(1), pipe.put(2), pipe.put(3)];
  assert.ok(await isPending(waiting[2]!));
  pipe.terminate();
  const settled = await Promise.allSettled(waiting);
  assert.equal(settled[2]!.status, "rejected");
  await pipe.done;
});

Deno.test("Pipeline[Symbol.asyncDispose] terminates a running pipeline at the end of the scope", async () => {
  const words = sharedWords();
  let outside: Pipeline<number, number | string>;
  {
    await using pipe = new Pipeline<number, number | string>(
      new Stage(HoldFirst, 2, { args: [words] }),
    );
    outside = pipe;
    pipe.put(0);
    pipe.put(1);
    await waitUntilChanged(words, 1);
  }
  assert.equal(await isPending(outside.done), false);
  await assert.rejects(outside.put(2), PipelineClosedError);
  await outside.done;
});

Deno.test("Pipeline[Symbol.asyncDispose] after the stop waits for done", async () => {
  let outside: Pipeline<number, number>;
  {
    await using pipe = new Pipeline<number, number>(new OrderedStage(echo, 2));
    outside = pipe;
    pipe.put(1);
    pipe.put(null);
    assert.deepEqual(await Array.fromAsync(pipe), [1]);
  }
  assert.equal(await isPending(outside.done), false);
});

Deno.test("Pipeline.done stays pending while workers run, and settles once they exited", async () => {
  const words = sharedWords();
  const pipe = new Pipeline<number, number | string>(
    new Stage(HoldFirst, 2, { args: [words] }),
  );
  using _guard = hangGuard(pipe);
  pipe.put(0);
  await waitUntilChanged(words, 1);
  pipe.put(null);
  assert.ok(await isPending(pipe.done), "done settled while a task ran");
  release(words);
  assert.deepEqual(await Array.fromAsync(pipe), [0]);
  await pipe.done;
});

// ---- building ----

Deno.test("Pipeline constructor throws a TypeError for a stage that already belongs to a pipeline", async () => {
  const first = new OrderedStage(echo<number>);
  const second = new OrderedStage(echo<number>);
  first.link(second);
  await using pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  assert.throws(() => new Pipeline<number, number>(first), TypeError);
  assert.throws(() => new Pipeline<number, number>(second), TypeError);
  await pipe.close();
  assert.deepEqual(await Array.fromAsync(pipe), []);
  assert.throws(() => new Pipeline<number, number>(first), TypeError);
  await pipe.done;
});

Deno.test("the default spin: only when every thread of the pipeline has a core of its own", async () => {
  assert.equal(defaultSpin(2, 2), SPIN);
  assert.equal(defaultSpin(1, 4), SPIN);
  assert.equal(defaultSpin(3, 2), 0);
  assert.equal(defaultSpin(9, 8), 0);
  // More workers than cores (on up to 8 cores), and an explicit spin: both
  // run to the end.
  for (const options of [{}, { spin: undefined }, { spin: 5 }]) {
    const stage = new UnorderedStage(
      (x: number) => x + 1,
      Math.min(navigator.hardwareConcurrency + 1, 9),
    );
    const pipe = new Pipeline<number, number>(stage, options);
    for (let i = 0; i < 100; i++) pipe.put(i);
    pipe.put(null);
    let sum = 0;
    for await (const result of pipe.results()) sum += result;
    assert.equal(sum, 5050);
    await pipe.done;
  }
});

// ---- issue 21, item 10: many short pipelines in a row ----

/**
 * Runs `body` while counting the bytes of every SharedArrayBuffer the main
 * thread allocates (the workers' allocations are their own).
 */
async function countingShared(
  body: (allocated: () => number) => Promise<void>,
): Promise<void> {
  const Native = globalThis.SharedArrayBuffer;
  let bytes = 0;
  globalThis.SharedArrayBuffer = new Proxy(Native, {
    construct(target, args, newTarget) {
      bytes += Number(args[0] ?? 0);
      return Reflect.construct(target, args, newTarget);
    },
  });
  try {
    await body(() => bytes);
  } finally {
    globalThis.SharedArrayBuffer = Native;
  }
}

/** One short pipeline: create, feed `tasks`, drain, `done`; returns it. */
async function shortRun(
  tasks: string[],
  ringBytes?: number,
): Promise<Pipeline<string, string>> {
  const first = new OrderedStage((x: string) => x + "!", 2);
  first.link(new UnorderedStage((x: string) => x.toUpperCase()));
  const pipe = new Pipeline<string, string>(first, { ringBytes });
  using _guard = hangGuard(pipe);
  const fed = pipe.feed(tasks);
  const results = await Array.fromAsync(pipe);
  await fed;
  await pipe.done;
  assert.deepEqual(
    results.sort(),
    tasks.map((x) => x.toUpperCase() + "!").sort(),
  );
  return pipe;
}

Deno.test("Pipelines one after another reuse the rings of those that ended by their stop, instead of allocating new ones (issue 21, item 10)", async () => {
  await countingShared(async (allocated) => {
    await shortRun(["a", "b", "c"]);
    const before = allocated();
    for (let i = 0; i < 10; i++) await shortRun(["a", "b", "c"]);
    const perRun = (allocated() - before) / 10;
    // Each run has 5 rings of 1 MiB; only its control words and status
    // blocks (a few hundred bytes) are new.
    assert.ok(perRun < 64 * 1024, `${perRun} bytes of shared memory a run`);
  });
});

Deno.test("Reused rings carry records that wrap and fragment, and a done pipeline no longer touches them", async () => {
  // Records of about 3 KiB through 4 KiB rings: every one is fragmented,
  // and the rings wrap many times.
  const tasks = Array.from({ length: 40 }, (_, i) => `${i}`.padEnd(3000, "x"));
  const first = await shortRun(tasks, 4096);
  const second = new Pipeline<string, string>(
    new OrderedStage((x: string) => x.slice(0, 3)),
    { ringBytes: 4096 },
  );
  using _guard = hangGuard(second);
  const fed = second.feed(tasks);
  // What the first pipeline's user may still do while the second runs on
  // its rings: none of it reaches them.
  first.terminate();
  await assert.rejects(first.put("late"), PipelineClosedError);
  assert.equal(await first.get(), null);
  assert.deepEqual(
    await Array.fromAsync(second),
    tasks.map((x) => x.slice(0, 3)),
  );
  await fed;
  await second.done;
  assert.equal(first.stats().end, "stop");
});

Deno.test("A pipeline gives its rings back only once its results are all read, and not after an early end", async () => {
  await shortRun(["a"]);
  const pooled = ringPool.bytes;
  // Unread results stay in their ring: get() must still find them.
  const unread = new Pipeline<number, number>(
    new OrderedStage((x: number) => x),
  );
  using _guard = hangGuard(unread);
  const rings = pooled - ringPool.bytes;
  assert.ok(rings > 0, "it took rings from the pool");
  await unread.feed([1, 2, 3]);
  await unread.done;
  assert.equal(ringPool.bytes, pooled - rings, "kept while results wait");
  assert.deepEqual(await Array.fromAsync(unread), [1, 2, 3]);
  assert.equal(ringPool.bytes, pooled, "given back once read");
  const terminated = new Pipeline<number, number>(
    new OrderedStage((x: number) => x),
  );
  terminated.put(1);
  terminated.terminate();
  await terminated.done;
  assert.equal(ringPool.bytes, pooled - rings, "kept after terminate()");
});
