import assert from "node:assert/strict";
import { FilterStage, OrderedStage, Pipeline, UnorderedStage } from "../mod.ts";

// These tests assert properties that hold whatever the timing (every task
// gets one result, in order; sub-pipeline results come from tasks that were
// passed on; shedding happens when the sub-pipeline is slow), never a schedule.

async function sleepy(task: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, 30));
  return task * 10;
}

function times10(task: number): number {
  return task * 10;
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

// ---- results ----

Deno.test("FilterStage puts one [task, results] per task, in order, shed or not", async () => {
  const filter = new FilterStage<number, number>(new OrderedStage(sleepy), {
    maxTasks: 1,
  });
  await using pipe = new Pipeline<number, [number, number[]]>(filter);
  for (const i of range(20)) pipe.put(i);
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  assert.deepEqual(results.map(([task]) => task), range(20));
  const seen = results.flatMap(([, subResults]) => subResults);
  // Without cacheResults, a sub-pipeline's result is reported once.
  assert.equal(new Set(seen).size, seen.length);
  for (const value of seen) assert.equal(value % 10, 0);
  // Twenty tasks at once into a 30 ms stage that may hold one: most are shed.
  assert.ok(seen.length < 20, `expected shedding, got ${seen.length} results`);
  await pipe.done;
});

Deno.test("FilterStage sheds while a slow sub-pipeline is full and passes tasks again once it drains", async () => {
  const filter = new FilterStage<number, number>(new OrderedStage(sleepy), {
    maxTasks: 2,
  });
  await using pipe = new Pipeline<number, [number, number[]]>(filter);
  const passed: number[] = [];
  const reading = (async () => {
    for await (const [, subResults] of pipe) {
      passed.push(...subResults.map((r) => r / 10));
    }
  })();
  // Rounds of four tasks, spaced out so that the sub-pipeline drains between
  // them, until a task from a later round has passed (on a loaded machine
  // its workers may start late): at most 40 rounds.
  for (let round = 0; round < 40 && !passed.some((t) => t >= 4); round++) {
    for (const i of range(4)) await pipe.put(round * 4 + i);
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
  pipe.put(null);
  await reading;
  // After each pause the sub-pipeline has room again, so tasks from later
  // rounds enter too (only the latest result of each round is reported).
  assert.ok(passed.some((task) => task >= 4), `passed: ${passed}`);
  assert.deepEqual(passed, [...passed].sort((a, b) => a - b));
  await pipe.done;
});

Deno.test("FilterStage with dropResults puts just the task", async () => {
  const filter = new FilterStage<number, number, number>(
    new OrderedStage(sleepy),
    { dropResults: true },
  );
  await using pipe = new Pipeline<number, number>(filter);
  for (const i of range(10)) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), range(10));
  await pipe.done;
});

Deno.test("FilterStage with cacheResults repeats each sub-pipeline's last result", async () => {
  const filter = new FilterStage<number, number>(
    [new OrderedStage(times10), new OrderedStage(sleepy)],
    { cacheResults: true, maxTasks: 1 },
  );
  await using pipe = new Pipeline<number, [number, number[]]>(filter);
  for (const i of range(10)) {
    await pipe.put(i);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  await new Promise((resolve) => setTimeout(resolve, 100));
  await pipe.put(10);
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  assert.deepEqual(results.map(([task]) => task), range(11));
  // Once both sub-pipelines have produced, every later result has two entries.
  const first = results.findIndex(([, subResults]) => subResults.length === 2);
  assert.ok(first >= 0);
  for (const [, subResults] of results.slice(first)) {
    assert.equal(subResults.length, 2);
  }
  await pipe.done;
});

Deno.test("FilterStage feeds several sub-pipelines, each a chain, and sits mid-chain", async () => {
  const head = new OrderedStage((x: number) => x + 1);
  const subA = new OrderedStage(times10, 2);
  subA.link(new UnorderedStage((x: number) => x + 1));
  const subB = new OrderedStage(sleepy);
  const filter = new FilterStage<number, number>([subA, subB], {
    maxTasks: 3,
  });
  const tail = new OrderedStage(([task, results]: [number, number[]]) =>
    `${task}:${results.length}`
  );
  head.link(filter.link(tail));
  await using pipe = new Pipeline<number, string>(head);
  for (const i of range(15)) pipe.put(i);
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  assert.deepEqual(
    results.map((r) => Number(r.split(":")[0])),
    range(15).map((i) => i + 1),
  );
  for (const r of results) {
    assert.ok(Number(r.split(":")[1]) <= 2);
  }
  await pipe.done;
});

// ---- stop ----

Deno.test("FilterStage passes the stop to its sub-pipelines, which finish their tasks", async () => {
  for (const doStopTask of [true, false]) {
    const filter = new FilterStage<number, number>(
      new OrderedStage(sleepy, 2),
      { maxTasks: 4, doStopTask },
    );
    await using pipe = new Pipeline<number, [number, number[]]>(filter);
    for (const i of range(8)) pipe.put(i);
    pipe.put(null);
    assert.equal((await Array.fromAsync(pipe)).length, 8);
    // done waits for every worker, the sub-pipelines' included.
    await pipe.done;
  }
});

Deno.test("FilterStage's sub-pipeline errors fail the pipeline", async () => {
  const sub = new OrderedStage(
    (x: number) => {
      if (x === 0) throw new Error("sub failed");
      return x;
    },
    1,
    { name: "sub" },
  );
  await using pipe = new Pipeline<number, [number, number[]]>(
    new FilterStage<number, number>(sub),
  );
  pipe.put(0).catch(() => {});
  pipe.put(null).catch(() => {});
  await assert.rejects(Array.fromAsync(pipe), /stage 'sub'.*sub failed/);
  await pipe.done;
});

// ---- bad arguments ----

Deno.test("FilterStage refuses bad arguments with the argument and its value", () => {
  const stage = () => new OrderedStage(times10);
  assert.throws(
    () => new FilterStage(stage(), { maxTasks: 0 }),
    RangeError,
  );
  assert.throws(
    () => new FilterStage(stage(), { maxTasks: 1.5 }),
    /'options.maxTasks' must be a positive integer, got 1.5/,
  );
  assert.throws(
    () => new FilterStage(stage(), { dropResult: true } as never),
    /'options.dropResult' is not a filter option/,
  );
  assert.throws(() => new FilterStage([]), TypeError);
  assert.throws(() => new FilterStage([1] as never), /must hold Stages, got 1/);
  const linked = stage();
  stage().link(linked);
  assert.throws(() => new FilterStage(linked), /root of its own sub-pipeline/);
});
