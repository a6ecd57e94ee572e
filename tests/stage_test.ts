import assert from "node:assert/strict";
import * as mpipe from "../mod.ts";
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

// Task functions and worker classes are shipped to the workers by their
// source, so each one below is self-contained unless a test says otherwise.

const fixture = (name: string) =>
  new URL(`./fixtures/${name}`, import.meta.url);

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

function byNumber(a: number, b: number): number {
  return a - b;
}

/** Runs `stage` alone on tasks 0 to n - 1 and returns every result. */
async function runStage<O>(
  stage: Stage<number, O>,
  n = 10,
): Promise<O[]> {
  await using pipe = new Pipeline<number, O>(stage);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < n; i++) pipe.put(i);
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  await pipe.done;
  return results;
}

/** Runs `stage` alone on tasks 0 to n - 1 and returns the StageError it fails with. */
async function stageFailure(
  stage: Stage<number, unknown>,
  n = 3,
): Promise<StageError> {
  const pipe = new Pipeline<number, unknown>(stage);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < n; i++) pipe.put(i).catch(() => {});
  pipe.put(null).catch(() => {});
  let failure: unknown = undefined;
  try {
    await Array.fromAsync(pipe);
  } catch (error) {
    failure = error;
  }
  await pipe.done;
  assert.ok(
    failure instanceof StageError,
    `expected a StageError, got ${failure}`,
  );
  return failure;
}

// ---- constructor arguments ----

const STAGE_KINDS = [
  ["OrderedStage", (size: unknown, options?: unknown) =>
    new OrderedStage(
      (x: number) => x,
      size as number,
      options as mpipe.StageOptions,
    )],
  ["UnorderedStage", (size: unknown, options?: unknown) =>
    new UnorderedStage(
      (x: number) => x,
      size as number,
      options as mpipe.StageOptions,
    )],
  ["Stage", (size: unknown, options?: unknown) =>
    new Stage(
      class Echo extends OrderedWorker<number, number> {
        doTask(task: number): number {
          return task;
        }
      },
      size as number,
      options as mpipe.StageOptions,
    )],
] as const;

Deno.test("Stage constructors throw a RangeError naming 'size' when it is not a positive integer", () => {
  for (const [kind, make] of STAGE_KINDS) {
    for (const size of [0, 1.5, "3", -1, NaN, Infinity, -Infinity, 2.000001]) {
      assert.throws(() => make(size), (error: unknown) => {
        assert.ok(
          error instanceof RangeError,
          `${kind} size ${String(size)}: ${error}`,
        );
        assert.match(error.message, /\bsize\b/);
        assert.ok(
          error.message.includes(String(size)),
          `${kind}: the message should show ${String(size)}: ${error.message}`,
        );
        return true;
      });
    }
  }
});

Deno.test("Stage constructors accept a size of 1 by default and any positive integer", () => {
  for (const [, make] of STAGE_KINDS) {
    make(undefined);
    make(1);
    make(7);
  }
});

Deno.test("Stage constructors throw a TypeError naming an unknown option", () => {
  for (const [kind, make] of STAGE_KINDS) {
    for (const name of ["foo", "disabledResult", "size", "maxbacklog"]) {
      assert.throws(() => make(1, { [name]: true }), (error: unknown) => {
        assert.ok(error instanceof TypeError, `${kind} ${name}: ${error}`);
        assert.ok(
          error.message.includes(name),
          `${kind}: the message should name ${name}: ${error.message}`,
        );
        return true;
      });
    }
  }
});

Deno.test("Stage constructors throw a TypeError naming an option of the wrong type and its value", () => {
  const wrong: [string, unknown, string][] = [
    ["name", 5, "5"],
    ["name", false, "false"],
    ["disableResult", "yes", "yes"],
    ["disableResult", 1, "1"],
    ["doStopTask", "true", "true"],
    ["doStopTask", 0, "0"],
    ["maxBacklog", "2", "2"],
    ["maxBacklog", true, "true"],
    ["args", "x", "x"],
    ["args", 3, "3"],
  ];
  for (const [kind, make] of STAGE_KINDS) {
    for (const [name, value, shown] of wrong) {
      assert.throws(() => make(1, { [name]: value }), (error: unknown) => {
        assert.ok(
          error instanceof TypeError,
          `${kind} ${name}=${String(value)}: ${error}`,
        );
        assert.ok(
          error.message.includes(name) && error.message.includes(shown),
          `${kind}: the message should name ${name} and ${shown}: ${error.message}`,
        );
        return true;
      });
    }
  }
});

Deno.test("Stage constructors refuse a maxBacklog that is not a positive integer, naming it", () => {
  for (const [kind, make] of STAGE_KINDS) {
    for (const value of [0, -1, 1.5, NaN]) {
      assert.throws(() => make(1, { maxBacklog: value }), (error: unknown) => {
        assert.ok(
          error instanceof RangeError || error instanceof TypeError,
          `${kind} maxBacklog=${value}: ${error}`,
        );
        assert.match(error.message, /maxBacklog/);
        assert.ok(error.message.includes(String(value)), error.message);
        return true;
      });
    }
  }
});

Deno.test("Stage constructors throw a TypeError when the options are not an object", () => {
  for (const [kind, make] of STAGE_KINDS) {
    for (const options of [null, 5, "name"]) {
      assert.throws(() => make(1, options), TypeError, kind);
    }
  }
});

Deno.test("Stage constructors throw a TypeError for a target that is neither a function, a class nor a module", () => {
  for (const target of [42, null, undefined, {}, { module: 5, export: "x" }]) {
    assert.throws(
      () => new OrderedStage(target as unknown as (x: number) => number),
      TypeError,
    );
    assert.throws(
      () => new UnorderedStage(target as unknown as (x: number) => number),
      TypeError,
    );
    assert.throws(
      () =>
        new Stage(target as unknown as typeof OrderedWorker<number, number>),
      TypeError,
    );
  }
});

Deno.test("Stage constructor throws a TypeError for a task function (it needs a worker class)", () => {
  assert.throws(
    () =>
      new Stage(
        ((x: number) => x) as unknown as typeof OrderedWorker<number, number>,
      ),
    TypeError,
  );
  class NotAWorker {
    doTask(task: number): number {
      return task;
    }
  }
  assert.throws(
    () =>
      new Stage(NotAWorker as unknown as typeof OrderedWorker<number, number>),
    TypeError,
  );
});

// ---- link ----

Deno.test("Stage.link() returns the stage it is called on, so chains nest", async () => {
  const s1 = new OrderedStage((x: number) => x + 1, 2);
  const s2 = new OrderedStage((x: number) => x * 2, 2);
  const s3 = new OrderedStage((x: number) => x - 3, 2);
  assert.equal(s2.link(s3), s2);
  assert.equal(s1.link(s2), s1);
  assert.deepEqual(await runStage(s1), range(10).map((x) => (x + 1) * 2 - 3));
});

Deno.test("Stage.link() throws a TypeError when linking a stage to itself", () => {
  const stage = new OrderedStage((x: number) => x);
  assert.throws(() => stage.link(stage), TypeError);
});

Deno.test("Stage.link() throws a TypeError when the link would make a cycle", () => {
  const a = new OrderedStage((x: number) => x);
  const b = new UnorderedStage((x: number) => x);
  const c = new OrderedStage((x: number) => x);
  a.link(b);
  b.link(c);
  assert.throws(() => c.link(a), TypeError);
  assert.throws(() => b.link(a), TypeError);
  assert.throws(() => c.link(b), TypeError);
});

Deno.test("Stage.link() throws a TypeError for something that is not a stage", () => {
  const stage = new OrderedStage((x: number) => x);
  for (const next of [null, {}, (x: number) => x]) {
    assert.throws(
      () => stage.link(next as unknown as Stage<number, unknown>),
      TypeError,
    );
  }
});

Deno.test("Stage.link() throws a TypeError after the pipeline was built", async () => {
  const first = new OrderedStage((x: number) => x);
  const second = new OrderedStage((x: number) => x);
  first.link(second);
  await using pipe = new Pipeline<number, number>(first);
  using _guard = hangGuard(pipe);
  const fresh = new OrderedStage((x: number) => x);
  assert.throws(() => second.link(fresh), TypeError);
  assert.throws(() => fresh.link(first), TypeError);
  assert.throws(() => first.link(fresh), TypeError);
  pipe.put(1);
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), [1]);
  await pipe.done;
});

// ---- function and class targets ----

Deno.test("OrderedStage runs function targets of every syntax", async () => {
  function named(x: number): number {
    return x + 1;
  }
  const methods = {
    shorthand(x: number): number {
      return x + 2;
    },
    async asyncShorthand(x: number): Promise<number> {
      return await Promise.resolve(x + 3);
    },
  };
  const targets: [(x: number) => unknown, (x: number) => unknown][] = [
    [named, (x) => x + 1],
    [(x) => x * 2, (x) => x * 2],
    [async (x) => await Promise.resolve(-x), (x) => -x],
    [async function asyncNamed(x) {
      await new Promise((resolve) => setTimeout(resolve, 1));
      return `${x}`;
    }, (x) => `${x}`],
    [methods.shorthand, (x) => x + 2],
    [methods.asyncShorthand, (x) => x + 3],
  ];
  for (const [target, expected] of targets) {
    assert.deepEqual(
      await runStage(new OrderedStage(target, 2)),
      range(10).map(expected),
      `target ${target.name || target}`,
    );
  }
});

Deno.test("Stage runs an OrderedWorker class in order with uneven task times", async () => {
  class Uneven extends OrderedWorker<number, number> {
    async doTask(task: number): Promise<number> {
      await new Promise((resolve) => setTimeout(resolve, (task * 7919) % 7));
      return task * 2;
    }
  }
  const stage = new Stage(Uneven, 4);
  assert.deepEqual(await runStage(stage, 60), range(60).map((x) => x * 2));
});

Deno.test("Stage runs an UnorderedWorker class unordered, returning every result", async () => {
  class Uneven extends UnorderedWorker<number, number> {
    async doTask(task: number): Promise<number> {
      await new Promise((resolve) => setTimeout(resolve, (task * 7919) % 7));
      return task * 2;
    }
  }
  const stage = new Stage(Uneven, 4);
  assert.deepEqual(
    (await runStage(stage, 60)).sort(byNumber),
    range(60).map((x) => x * 2),
  );
});

Deno.test("OrderedStage and UnorderedStage also accept worker classes", async () => {
  class Uneven extends UnorderedWorker<number, number> {
    async doTask(task: number): Promise<number> {
      await new Promise((resolve) => setTimeout(resolve, (task * 7919) % 7));
      return task + 100;
    }
  }
  assert.deepEqual(
    await runStage(new OrderedStage(Uneven, 4), 40),
    range(40).map((x) => x + 100),
  );
  assert.deepEqual(
    (await runStage(new UnorderedStage(Uneven, 3), 40)).sort(byNumber),
    range(40).map((x) => x + 100),
  );
});

Deno.test("Stage runs worker classes that extend a namespace import (mpipe.OrderedWorker)", async () => {
  class Ordered extends mpipe.OrderedWorker<number, string> {
    async doTask(task: number): Promise<string> {
      await new Promise((resolve) => setTimeout(resolve, (task * 13) % 5));
      this.putResult(`${task}a`);
      return `${task}b`;
    }
  }
  class Unordered extends mpipe.UnorderedWorker<number, number> {
    doTask(task: number): number {
      return -task;
    }
  }
  const first = new mpipe.Stage(Ordered, 3);
  assert.deepEqual(
    await runStage(first, 20),
    range(20).flatMap((x) => [`${x}a`, `${x}b`]),
  );
  const second = new mpipe.Stage(Unordered, 2);
  assert.deepEqual(
    (await runStage(second, 20)).sort(byNumber),
    range(20).map((x) => -x).sort(byNumber),
  );
});

// ---- targets that are not self-contained ----

const factor = 3;
function helper(x: number): number {
  return x * 2;
}

Deno.test("OrderedStage with a function that captured an outer variable fails with a StageError naming it", async () => {
  const error = await stageFailure(
    new OrderedStage((x: number) => x * factor, 2, { name: "capturing" }),
  );
  assert.equal(error.stage, "capturing");
  assert.match(error.message, /\bfactor\b/);
  assert.match(error.message, /module/i);
  assert.ok(error.cause instanceof ReferenceError);
});

Deno.test("UnorderedStage with a function that calls an outer function fails with a StageError naming it", async () => {
  const error = await stageFailure(
    new UnorderedStage((x: number) => helper(x), 1),
  );
  assert.match(error.message, /\bhelper\b/);
  assert.match(error.message, /module/i);
});

Deno.test("Stage with a worker class whose doTask captured an outer variable fails with a StageError naming it", async () => {
  class Capturing extends OrderedWorker<number, number> {
    doTask(task: number): number {
      return task * factor;
    }
  }
  const error = await stageFailure(new Stage(Capturing, 2));
  assert.equal(error.stage, "Capturing");
  assert.match(error.message, /\bfactor\b/);
  assert.match(error.message, /module/i);
});

Deno.test("Stage with a worker class whose field captured an outer variable fails with a StageError naming it", async () => {
  class CapturingField extends OrderedWorker<number, number> {
    scale = factor;
    doTask(task: number): number {
      return task * this.scale;
    }
  }
  const error = await stageFailure(new Stage(CapturingField, 1));
  assert.match(error.message, /\bfactor\b/);
  assert.match(error.message, /module/i);
});

Deno.test("Stage with a worker class whose doInit captured an outer variable fails with a StageError naming it", async () => {
  class CapturingInit extends OrderedWorker<number, number> {
    scale = 0;
    override doInit(): void {
      this.scale = helper(1);
    }
    doTask(task: number): number {
      return task * this.scale;
    }
  }
  const error = await stageFailure(new Stage(CapturingInit, 1));
  assert.match(error.message, /\bhelper\b/);
  assert.match(error.message, /module/i);
});

// ---- module targets ----

Deno.test("OrderedStage runs a module target's default export (URL and string specifier)", async () => {
  assert.deepEqual(
    await runStage(new OrderedStage<number, number>(fixture("square.ts"), 3)),
    range(10).map((x) => x * x),
  );
  assert.deepEqual(
    await runStage(
      new UnorderedStage<number, number>(fixture("square.ts").href, 2),
    ).then((r) => r.sort(byNumber)),
    range(10).map((x) => x * x),
  );
});

Deno.test("OrderedStage runs a module target's named export ({ module, export })", async () => {
  assert.deepEqual(
    await runStage(
      new OrderedStage<number, number>(
        { module: fixture("named.ts"), export: "triple" },
        2,
      ),
    ),
    range(10).map((x) => x * 3),
  );
  assert.deepEqual(
    await runStage(
      new OrderedStage<number, number>(
        { module: fixture("named.ts").href, export: "triple" },
        1,
      ),
    ),
    range(10).map((x) => x * 3),
  );
});

Deno.test("Stage runs a module's default-export worker class, ordered, with doInit", async () => {
  const stage = new Stage<number, [number, number]>(
    fixture("counter_worker.ts"),
    1,
  );
  assert.deepEqual(
    await runStage(stage, 10),
    range(10).map((x) => [x, x + 1]),
  );
  const four = new Stage<number, [number, number]>(
    fixture("counter_worker.ts"),
    4,
  );
  const results = await runStage(four, 40);
  assert.deepEqual(results.map(([task]) => task), range(40));
  assert.ok(results.every(([, count]) => count >= 1));
});

Deno.test("Stage runs a module's named worker class with args, and one that imports a helper module", async () => {
  const labeller = new Stage<number, string>(
    { module: fixture("named.ts"), export: "Labeller" },
    3,
    { args: ["item"] },
  );
  assert.deepEqual(
    await runStage(labeller, 12),
    range(12).map((x) => `item-${x}`),
  );
  const twice = new Stage<number, number>(
    { module: fixture("named.ts"), export: "Twice" },
    2,
  );
  assert.deepEqual(
    (await runStage(twice, 10)).sort(byNumber),
    range(10).flatMap((x) => [x, x]),
  );
});

Deno.test("Stage of a module target chains with function and class stages", async () => {
  class Negate extends OrderedWorker<number, number> {
    doTask(task: number): number {
      return -task;
    }
  }
  const first = new OrderedStage((x: number) => x + 1, 2);
  const second = new OrderedStage<number, number>(fixture("square.ts"), 3);
  const third = new Stage(Negate, 2);
  first.link(second.link(third));
  assert.deepEqual(
    await runStage(first, 20),
    range(20).map((x) => -((x + 1) ** 2)),
  );
});

Deno.test("Stage of a module whose export is a task function runs it ordered, as OrderedStage would", async () => {
  const pipe = new Pipeline<number, number>(
    new Stage<number, number>(fixture("square.ts"), 2),
  );
  await pipe.feed([1, 2, 3, 4, 5]);
  assert.deepEqual(await Array.fromAsync(pipe), [1, 4, 9, 16, 25]);
});

Deno.test("Stage of a module whose export is neither a worker class nor a function fails with a StageError", async () => {
  const error = await stageFailure(
    new Stage<number, number>(
      { module: fixture("named.ts"), export: "notATarget" },
      1,
      { name: "not-a-target" },
    ),
  );
  assert.equal(error.stage, "not-a-target");
  assert.match(error.message, /neither a worker class nor a task function/);
});

Deno.test("OrderedStage of a module without the export fails with a StageError naming it", async () => {
  const error = await stageFailure(
    new OrderedStage<number, number>({
      module: fixture("named.ts"),
      export: "missing",
    }),
  );
  assert.match(error.message, /missing/);
});

Deno.test("OrderedStage of a module export that is not a function fails with a StageError", async () => {
  await stageFailure(
    new OrderedStage<number, number>({
      module: fixture("named.ts"),
      export: "notATarget",
    }),
  );
});

Deno.test("OrderedStage of a module that does not exist fails with a StageError", async () => {
  await stageFailure(
    new OrderedStage<number, number>(fixture("no_such_module.ts"), 2),
  );
});

// ---- hooks: doInit, doStopTask ----

Deno.test("OrderedWorker.doInit() runs once in each worker before its first task", async () => {
  class Init extends OrderedWorker<number, [number, number]> {
    inits = 0;
    base = 0;
    override doInit(): void {
      this.inits++;
      this.base = 100;
    }
    doTask(task: number): [number, number] {
      return [task + this.base, this.inits];
    }
  }
  assert.deepEqual(
    await runStage(new Stage(Init, 3), 30),
    range(30).map((x) => [x + 100, 1]),
  );
});

Deno.test("UnorderedWorker.doInit() may be async and is awaited before the first task", async () => {
  class AsyncInit extends UnorderedWorker<number, string> {
    inits = 0;
    ready = "no";
    override async doInit(): Promise<void> {
      this.inits++;
      await new Promise((resolve) => setTimeout(resolve, 5));
      this.ready = "yes";
    }
    doTask(task: number): string {
      return `${task}:${this.ready}:${this.inits}`;
    }
  }
  const results = await runStage(new Stage(AsyncInit, 2), 20);
  assert.deepEqual(
    results.sort(),
    range(20).map((x) => `${x}:yes:1`).sort(),
  );
});

Deno.test("OrderedWorker.doInit() that throws fails the stage with a StageError", async () => {
  class BadInit extends OrderedWorker<number, number> {
    override doInit(): void {
      throw new Error("no init for you");
    }
    doTask(task: number): number {
      return task;
    }
  }
  const error = await stageFailure(new Stage(BadInit, 2, { name: "bad-init" }));
  assert.equal(error.stage, "bad-init");
  assert.match(error.message, /no init for you/);
});

Deno.test("Stage doStopTask calls each worker's doTask(null) once at stop, after its tasks", async () => {
  type Out = number | { stop: number };
  class Counting extends OrderedWorker<number | null, Out> {
    count = 0;
    doTask(task: number | null): Out {
      if (task === null) return { stop: this.count };
      this.count++;
      return task;
    }
  }
  const results = await runStage(
    new Stage(Counting, 3, { doStopTask: true }) as Stage<number, Out>,
    30,
  );
  assert.equal(results.length, 33);
  assert.deepEqual(results.slice(0, 30), range(30));
  const stops = results.slice(30) as { stop: number }[];
  assert.ok(stops.every((s) => typeof s.stop === "number"), String(stops));
  assert.equal(stops.reduce((sum, s) => sum + s.stop, 0), 30);
});

Deno.test("UnorderedStage doStopTask calls a task function with null once per worker", async () => {
  const results = await runStage(
    new UnorderedStage(
      (x: number | null) => x === null ? "stop" : x,
      4,
      { doStopTask: true },
    ) as Stage<number, number | string>,
    20,
  );
  assert.equal(results.filter((r) => r === "stop").length, 4);
  assert.deepEqual(
    (results.filter((r) => r !== "stop") as number[]).sort(byNumber),
    range(20),
  );
});

Deno.test("Stage without doStopTask never calls doTask(null)", async () => {
  const results = await runStage(
    new OrderedStage((x: number | null) => x === null ? "stop" : x, 3) as Stage<
      number,
      number | string
    >,
    10,
  );
  assert.deepEqual(results, range(10));
});

// ---- options: args, disableResult, name ----

Deno.test("Stage args are passed to the worker class constructor", async () => {
  class Scaler extends OrderedWorker<number, string> {
    scale: number;
    unit: string;
    constructor(scale: number, unit: string) {
      super();
      this.scale = scale;
      this.unit = unit;
    }
    doTask(task: number): string {
      return `${task * this.scale}${this.unit}`;
    }
  }
  assert.deepEqual(
    await runStage(new Stage(Scaler, 2, { args: [10, "px"] }), 5),
    ["0px", "10px", "20px", "30px", "40px"],
  );
});

Deno.test("Stage disableResult runs every task, puts no result, and passes the stop", async () => {
  class Count extends UnorderedWorker<number, number> {
    words: Int32Array;
    constructor(words: Int32Array) {
      super();
      this.words = words;
    }
    doTask(task: number): number {
      Atomics.add(this.words, 0, 1);
      this.putResult(task);
      return task;
    }
  }
  const words = sharedWords();
  const first = new OrderedStage((x: number) => x, 2);
  first.link(new Stage(Count, 3, { args: [words], disableResult: true }));
  assert.deepEqual(await runStage(first, 50), []);
  assert.equal(Atomics.load(words, 0), 50);
});

Deno.test("Stage disableResult in a middle stage and on one leaf of a fork", async () => {
  const root = new OrderedStage((x: number) => x, 2);
  const silent = new OrderedStage((x: number) => x, 2, { disableResult: true });
  const after = new OrderedStage((x: number) => x, 1);
  const loud = new OrderedStage((x: number) => x * 2, 2);
  root.link(silent.link(after)).link(loud);
  await using pipe = new Pipeline<number, number>(root);
  using _guard = hangGuard(pipe);
  for (let i = 0; i < 20; i++) pipe.put(i);
  pipe.put(null);
  const [fromAfter, fromLoud] = await Promise.all([
    Array.fromAsync(after.results()),
    Array.fromAsync(loud.results()),
  ]);
  assert.deepEqual(fromAfter, []);
  assert.deepEqual(fromLoud, range(20).map((x) => x * 2));
  await pipe.done;
});

Deno.test("Stage name defaults to the target's name and appears in a StageError", async () => {
  function failing(x: number): number {
    if (x === 1) throw new Error("one");
    return x;
  }
  const unnamed = await stageFailure(new OrderedStage(failing, 1));
  assert.equal(unnamed.stage, "failing");
  assert.match(unnamed.message, /failing/);
  const named = await stageFailure(
    new OrderedStage(failing, 1, { name: "my stage" }),
  );
  assert.equal(named.stage, "my stage");
  assert.match(named.message, /my stage/);
  assert.equal(named.task, 1);
});
