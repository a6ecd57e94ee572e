import assert from "node:assert/strict";
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  Stage,
  StageError,
  UnorderedStage,
  UnorderedWorker,
} from "../mod.ts";
import { hangGuard, sharedWords } from "./fixtures/guard.ts";

// Joins: a stage linked from several upstream stages takes the tasks of all of
// them, and stops once every one of them has stopped.
//
// Task functions and worker classes are shipped to the workers by their
// source, so each one below is self-contained: it uses only globals, its
// parameters and the package's worker classes.

/** A task as tagged by a branch: which branch it went through, and its number. */
interface Tagged {
  branch: string;
  task: number;
}

/** Tags each task with its branch's name, after an uneven pause (0 to 4 ms), in order. */
class Tag extends OrderedWorker<number, Tagged> {
  branch: string;

  constructor(branch: string) {
    super();
    this.branch = branch;
  }

  async doTask(task: number): Promise<Tagged> {
    await new Promise((resolve) => setTimeout(resolve, (task * 7919) % 5));
    return { branch: this.branch, task };
  }
}

/** Tags each task with its branch's name, after an uneven pause, in any order. */
class UnorderedTag extends UnorderedWorker<number, Tagged> {
  branch: string;

  constructor(branch: string) {
    super();
    this.branch = branch;
  }

  async doTask(task: number): Promise<Tagged> {
    await new Promise((resolve) => setTimeout(resolve, (task * 104729) % 5));
    return { branch: this.branch, task };
  }
}

/** Tags each task with its branch's name at once. */
class QuickTag extends OrderedWorker<number, Tagged> {
  branch: string;

  constructor(branch: string) {
    super();
    this.branch = branch;
  }

  doTask(task: number): Tagged {
    return { branch: this.branch, task };
  }
}

/** Returns its task after an uneven pause (0 to 2 ms), so workers finish out of order. */
async function unevenPass<T extends { task: number }>(tagged: T): Promise<T> {
  await new Promise((resolve) => setTimeout(resolve, (tagged.task * 31) % 3));
  return tagged;
}

/** Returns its task unchanged. */
function pass<T>(task: T): T {
  return task;
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

function byNumber(a: number, b: number): number {
  return a - b;
}

/** The task numbers of one branch's results, in the order they came. */
function tasksOf(results: Tagged[], branch: string): number[] {
  return results.filter((r) => r.branch === branch).map((r) => r.task);
}

/** How many results each `branch:task` pair has. */
function countPairs(results: Tagged[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const { branch, task } of results) {
    const key = `${branch}:${task}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
}

/** Puts tasks 0 to n - 1 and the stop request, and reads every result. */
async function run<O>(pipe: Pipeline<number, O>, n: number): Promise<O[]> {
  for (let task = 0; task < n; task++) pipe.put(task);
  pipe.put(null);
  const results: O[] = [];
  for await (const result of pipe.results()) results.push(result);
  return results;
}

// ---- a diamond ----

Deno.test("Stage.link() builds a diamond whose join takes every task from both branches", async () => {
  const a = new OrderedStage(pass<number>, 2, { name: "a" });
  const b = new Stage(Tag, 2, { name: "b", args: ["b"] });
  const c = new Stage(Tag, 1, { name: "c", args: ["c"] });
  const d = new OrderedStage(pass<Tagged>, 2, { name: "d" });
  a.link(b);
  a.link(c);
  b.link(d);
  c.link(d);
  await using pipe = new Pipeline<number, Tagged>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 100);
  assert.equal(results.length, 200);
  assert.deepEqual(tasksOf(results, "b").sort(byNumber), range(100));
  assert.deepEqual(tasksOf(results, "c").sort(byNumber), range(100));
  assert.equal(await pipe.get(), null);
  await pipe.done;
});

Deno.test("Stage.link() chains return the stage they are called on, so a diamond can be linked in two statements", async () => {
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const b = new Stage(QuickTag, 1, { name: "b", args: ["b"] });
  const c = new Stage(QuickTag, 1, { name: "c", args: ["c"] });
  const d = new OrderedStage(pass<Tagged>, 1, { name: "d" });
  a.link(b.link(d));
  a.link(c.link(d));
  await using pipe = new Pipeline<number, Tagged>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 10);
  assert.deepEqual(tasksOf(results, "b"), range(10));
  assert.deepEqual(tasksOf(results, "c"), range(10));
  await pipe.done;
});

// ---- the stop ----

/** Tags tasks "b"; its stop task (doStopTask) sets shared word 0 to say the branch is stopping. */
class SignalAtStop extends OrderedWorker<number | null, Tagged> {
  words: Int32Array;

  constructor(words: Int32Array) {
    super();
    this.words = words;
  }

  doTask(task: number | null): Tagged | undefined {
    if (task === null) {
      Atomics.store(this.words, 0, 1);
      Atomics.notify(this.words, 0);
      return undefined;
    }
    return { branch: "b", task };
  }
}

/**
 * Holds every task until shared word 0 is set (branch b is stopping), then
 * tags it "c". The wait is bounded (5 s) so a bug cannot hang a worker: a task
 * that waited in vain is tagged "c: waited in vain".
 */
class WaitForSignal extends UnorderedWorker<number, Tagged> {
  words: Int32Array;

  constructor(words: Int32Array) {
    super();
    this.words = words;
  }

  doTask(task: number): Tagged {
    const deadline = Date.now() + 5_000;
    while (Atomics.load(this.words, 0) === 0) {
      const left = deadline - Date.now();
      if (left <= 0) return { branch: "c: waited in vain", task };
      Atomics.wait(this.words, 0, 0, left);
    }
    return { branch: "c", task };
  }
}

Deno.test("A join stops only after every upstream stage has stopped: it takes a branch's tasks after another branch stopped", async () => {
  // Branch c cannot finish any task before branch b is stopping, so the join
  // sees b's stop before any of c's results: it must go on taking them.
  const words = sharedWords();
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const b = new Stage(SignalAtStop, 2, {
    name: "b",
    args: [words],
    doStopTask: true,
  });
  const c = new Stage(WaitForSignal, 2, { name: "c", args: [words] });
  const d = new UnorderedStage(pass<Tagged>, 2, { name: "d" });
  a.link(b);
  a.link(c);
  b.link(d);
  c.link(d);
  await using pipe = new Pipeline<number, Tagged>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 50);
  assert.deepEqual(tasksOf(results, "b").sort(byNumber), range(50));
  assert.deepEqual(tasksOf(results, "c").sort(byNumber), range(50));
  assert.equal(results.length, 100);
  await pipe.done;
});

Deno.test("A join with three upstream stages ends once all three have stopped", async () => {
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const branches = ["x", "y", "z"].map((branch, i) =>
    new Stage(UnorderedTag, i + 1, { name: branch, args: [branch] })
  );
  const d = new UnorderedStage(pass<Tagged>, 2, { name: "d" });
  for (const branch of branches) a.link(branch.link(d));
  await using pipe = new Pipeline<number, Tagged>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 60);
  for (const branch of ["x", "y", "z"]) {
    assert.deepEqual(tasksOf(results, branch).sort(byNumber), range(60));
  }
  assert.equal(results.length, 180);
  await pipe.done;
});

// ---- order ----

Deno.test("An ordered join of several uneven workers keeps the order it took tasks in: each branch's results in that branch's order", async () => {
  // One worker per branch: each branch delivers its tasks in order, so the
  // join's order (the order it took tasks in) has each branch in task order.
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const b = new Stage(Tag, 1, { name: "b", args: ["b"] });
  const c = new Stage(Tag, 1, { name: "c", args: ["c"] });
  const d = new OrderedStage(unevenPass<Tagged>, 3, { name: "d" });
  a.link(b);
  a.link(c);
  b.link(d);
  c.link(d);
  await using pipe = new Pipeline<number, Tagged>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 120);
  assert.deepEqual(tasksOf(results, "b"), range(120));
  assert.deepEqual(tasksOf(results, "c"), range(120));
  await pipe.done;
});

Deno.test("An ordered stage of several uneven workers keeps its order into a join", async () => {
  // b and c are OrderedStages of several workers: each must deliver its
  // results in task order, also to a stage that is linked from both.
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const b = new Stage(Tag, 3, { name: "b", args: ["b"] });
  const c = new Stage(Tag, 2, { name: "c", args: ["c"] });
  const d = new OrderedStage(pass<Tagged>, 1, { name: "d" });
  a.link(b);
  a.link(c);
  b.link(d);
  c.link(d);
  await using pipe = new Pipeline<number, Tagged>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 120);
  assert.deepEqual(tasksOf(results, "b"), range(120));
  assert.deepEqual(tasksOf(results, "c"), range(120));
  await pipe.done;
});

Deno.test("An unordered join puts every result of both branches exactly once", async () => {
  const a = new UnorderedStage(pass<number>, 2, { name: "a" });
  const b = new Stage(UnorderedTag, 3, { name: "b", args: ["b"] });
  const c = new Stage(UnorderedTag, 2, { name: "c", args: ["c"] });
  const d = new UnorderedStage(unevenPass<Tagged>, 2, { name: "d" });
  a.link(b);
  a.link(c);
  b.link(d);
  c.link(d);
  await using pipe = new Pipeline<number, Tagged>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 150);
  assert.deepEqual(tasksOf(results, "b").sort(byNumber), range(150));
  assert.deepEqual(tasksOf(results, "c").sort(byNumber), range(150));
  assert.equal(results.length, 300);
  await pipe.done;
});

// ---- uneven branches ----

function plus1000(task: number): number {
  return task + 1000;
}

async function unevenPlus5000(task: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, (task * 13) % 4));
  return task + 5000;
}

Deno.test("A join takes tasks from branches of different lengths and worker counts, and from the root itself", async () => {
  // a -> d directly; a -> b1 -> b2 -> b3 -> d (three stages, +1000 each);
  // a -> c -> d (three uneven unordered workers, +5000).
  const a = new OrderedStage(pass<number>, 2, { name: "a" });
  const b1 = new OrderedStage(plus1000, 1, { name: "b1" });
  const b2 = new OrderedStage(plus1000, 4, { name: "b2" });
  const b3 = new UnorderedStage(plus1000, 2, { name: "b3" });
  const c = new UnorderedStage(unevenPlus5000, 3, { name: "c" });
  const d = new UnorderedStage(pass<number>, 2, { name: "d" });
  a.link(d);
  a.link(b1.link(b2.link(b3.link(d))));
  a.link(c.link(d));
  await using pipe = new Pipeline<number, number>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 300);
  const expected = [
    ...range(300),
    ...range(300).map((task) => task + 3000),
    ...range(300).map((task) => task + 5000),
  ];
  assert.deepEqual(results.sort(byNumber), expected);
  await pipe.done;
});

Deno.test("A join of an ordered chain and an unordered branch into an ordered join of several workers loses and repeats nothing", async () => {
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const b1 = new OrderedStage(plus1000, 2, { name: "b1" });
  const b2 = new OrderedStage(plus1000, 1, { name: "b2" });
  const c = new UnorderedStage(unevenPlus5000, 2, { name: "c" });
  const d = new OrderedStage(pass<number>, 3, { name: "d" });
  a.link(b1.link(b2.link(d)));
  a.link(c.link(d));
  await using pipe = new Pipeline<number, number>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 200);
  const expected = [
    ...range(200).map((task) => task + 2000),
    ...range(200).map((task) => task + 5000),
  ];
  assert.deepEqual(results.sort(byNumber), expected);
  await pipe.done;
});

// ---- exactly once ----

Deno.test("Every result arrives exactly once through a diamond of many workers: each task twice, once per branch", async () => {
  const n = 3000;
  const a = new UnorderedStage(pass<number>, 2, { name: "a" });
  const b = new Stage(QuickTag, 3, { name: "b", args: ["b"] });
  const c = new Stage(QuickTag, 2, { name: "c", args: ["c"] });
  const d = new UnorderedStage(pass<Tagged>, 3, { name: "d" });
  a.link(b);
  a.link(c);
  b.link(d);
  c.link(d);
  await using pipe = new Pipeline<number, Tagged>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, n);
  assert.equal(results.length, 2 * n);
  const perTask = new Map<number, number>();
  for (const { task } of results) {
    perTask.set(task, (perTask.get(task) ?? 0) + 1);
  }
  assert.deepEqual(
    range(n).filter((task) => perTask.get(task) !== 2),
    [],
    "tasks that did not arrive exactly twice",
  );
  const pairs = countPairs(results);
  assert.equal(pairs.size, 2 * n);
  assert.ok([...pairs.values()].every((count) => count === 1));
  await pipe.done;
});

Deno.test("Every result arrives exactly once through two joins in a row", async () => {
  // a -> (b, c) -> d -> (e, f) -> g: each task reaches g four times.
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const b = new OrderedStage(pass<number>, 2, { name: "b" });
  const c = new UnorderedStage(pass<number>, 2, { name: "c" });
  const d = new UnorderedStage(pass<number>, 2, { name: "d" });
  const e = new OrderedStage(pass<number>, 1, { name: "e" });
  const f = new UnorderedStage(pass<number>, 3, { name: "f" });
  const g = new UnorderedStage(pass<number>, 2, { name: "g" });
  a.link(b.link(d));
  a.link(c.link(d));
  d.link(e.link(g));
  d.link(f.link(g));
  await using pipe = new Pipeline<number, number>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 500);
  const expected = range(500).flatMap((task) => [task, task, task, task]);
  assert.deepEqual(results.sort(byNumber), expected);
  await pipe.done;
});

// ---- errors ----

function failOnFive(task: number): Tagged {
  if (task === 5) throw new Error("five is not allowed");
  return { branch: "b", task };
}

Deno.test("A task that throws on one branch of a join rejects get() with a StageError naming that stage", async () => {
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const b = new OrderedStage(failOnFive, 2, { name: "b" });
  const c = new Stage(Tag, 1, { name: "c", args: ["c"] });
  const d = new OrderedStage(pass<Tagged>, 2, { name: "d" });
  a.link(b);
  a.link(c);
  b.link(d);
  c.link(d);
  await using pipe = new Pipeline<number, Tagged>(a);
  using _guard = hangGuard(pipe);
  for (let task = 0; task < 20; task++) pipe.put(task).catch(() => {});
  pipe.put(null).catch(() => {});
  const failed = async () => {
    while ((await pipe.get()) !== null) {
      // Results before the failure may come; the failure must come too.
    }
  };
  await assert.rejects(failed(), (error: unknown) => {
    assert.ok(error instanceof StageError, String(error));
    assert.equal(error.stage, "b");
    assert.equal(error.task, 5);
    assert.match(error.message, /five is not allowed/);
    return true;
  });
  await pipe.done;
});

function failOnSevenFromC(tagged: Tagged): Tagged {
  if (tagged.branch === "c" && tagged.task === 7) {
    throw new Error("c7 is not allowed");
  }
  return tagged;
}

Deno.test("A task that throws in the join stage rejects results() with a StageError naming the join", async () => {
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const b = new Stage(QuickTag, 1, { name: "b", args: ["b"] });
  const c = new Stage(QuickTag, 2, { name: "c", args: ["c"] });
  const d = new UnorderedStage(failOnSevenFromC, 2, { name: "d" });
  a.link(b);
  a.link(c);
  b.link(d);
  c.link(d);
  await using pipe = new Pipeline<number, Tagged>(a);
  using _guard = hangGuard(pipe);
  for (let task = 0; task < 20; task++) pipe.put(task).catch(() => {});
  pipe.put(null).catch(() => {});
  await assert.rejects(Array.fromAsync(pipe), (error: unknown) => {
    assert.ok(error instanceof StageError, String(error));
    assert.equal(error.stage, "d");
    assert.match(error.message, /c7 is not allowed/);
    return true;
  });
  await pipe.done;
});

Deno.test('A join under onError "skip" drops the failed task of one branch and keeps the rest', async () => {
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const b = new OrderedStage(failOnFive, 2, { name: "b", onError: "skip" });
  const c = new Stage(QuickTag, 1, { name: "c", args: ["c"] });
  const d = new UnorderedStage(pass<Tagged>, 2, { name: "d" });
  a.link(b);
  a.link(c);
  b.link(d);
  c.link(d);
  await using pipe = new Pipeline<number, Tagged>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 20);
  assert.deepEqual(
    tasksOf(results, "b").sort(byNumber),
    range(20).filter((task) => task !== 5),
  );
  assert.deepEqual(tasksOf(results, "c").sort(byNumber), range(20));
  assert.equal(b.skipped, 1);
  await pipe.done;
});

// ---- cycles ----

Deno.test("Stage.link() refuses a cycle through a join with a TypeError and leaves the stages as they were", async () => {
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const b = new OrderedStage(pass<number>, 1, { name: "b" });
  const c = new OrderedStage(pass<number>, 1, { name: "c" });
  const d = new OrderedStage(pass<number>, 1, { name: "d" });
  a.link(b);
  a.link(c);
  b.link(d);
  c.link(d);
  assert.throws(() => d.link(a), TypeError);
  assert.throws(() => d.link(b), TypeError);
  assert.throws(() => d.link(c), TypeError);
  assert.throws(() => c.link(a), TypeError);
  assert.throws(() => d.link(d), TypeError);
  assert.throws(() => d.link(a), /cycle/);
  // The refused links changed nothing: the diamond still runs and ends.
  await using pipe = new Pipeline<number, number>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 10);
  assert.deepEqual(
    results.sort(byNumber),
    range(10).flatMap((task) => [task, task]),
  );
  await pipe.done;
});

Deno.test("Stage.link() twice between the same stages is one link, not a second path into the join", async () => {
  const a = new OrderedStage(pass<number>, 1, { name: "a" });
  const b = new OrderedStage(pass<number>, 1, { name: "b" });
  const d = new OrderedStage(pass<number>, 1, { name: "d" });
  a.link(b);
  a.link(d);
  b.link(d);
  b.link(d);
  await using pipe = new Pipeline<number, number>(a);
  using _guard = hangGuard(pipe);
  const results = await run(pipe, 10);
  assert.deepEqual(
    results.sort(byNumber),
    range(10).flatMap((task) => [task, task]),
  );
  await pipe.done;
});
