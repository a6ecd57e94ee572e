// Elastic stages (issue 27): `size` as { min, max }, workers that join while
// tasks wait and leave once idle, the `threads` budget and rebalancing, and
// every guarantee while workers come and go. Waits are bounded (waitFor);
// no test compares a time.

import assert from "node:assert/strict";
import {
  OrderedStage,
  Pipeline,
  type PipelineStats,
  type Stage,
  StageError,
  type StageOptions,
  UnorderedStage,
} from "../mod.ts";

/** Waits until `condition()` holds, looking every 10 ms; fails after `ms`. */
async function waitFor(
  condition: () => boolean,
  what: string,
  ms = 30_000,
): Promise<void> {
  const end = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > end) assert.fail(`gave up waiting (${ms} ms) for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A task of `ms` of CPU, self-contained (it is shipped by its source). */
function spin(task: { id: number; ms: number }) {
  const end = performance.now() + task.ms;
  while (performance.now() < end) { /* work */ }
  return task.id;
}

/**
 * A stage grows only while the pipeline's workers keep fewer than all the
 * cores busy: on one core, nothing grows (tests that wait for growth skip).
 */
const oneCore = navigator.hardwareConcurrency < 2;

const tasks = (from: number, to: number, ms: number) =>
  Array.from({ length: to - from }, (_, i) => ({ id: from + i, ms }));

const sizeOf = (pipe: Pipeline<never, unknown>, stage: number) =>
  pipe.stats().stages[stage]!.size;

/** Every place's spans ended: no worker thread is held. */
const noWorkers = (stats: PipelineStats, stage: number) =>
  stats.stages[stage]!.workers.every((w) =>
    w.spans.every((span) => span.endMs !== null)
  );

for (const ordered of [false, true]) {
  const kind = ordered ? "ordered" : "unordered";
  Deno.test({
    name:
      `an elastic ${kind} stage grows under load and shrinks when idle, with exact output`,
    ignore: oneCore,
    fn: async () => {
      const make = ordered ? OrderedStage : UnorderedStage;
      const first = new OrderedStage((t: { id: number; ms: number }) => t, 1, {
        name: "first",
      });
      const middle = new make(spin, { min: 1, max: 3 }, {
        name: "middle",
        idleMs: 50,
        maxBacklog: 64,
      }) as Stage<{ id: number; ms: number }, number>;
      const last = new make((id: number) => id * 2, { min: 1, max: 2 }, {
        name: "last",
        idleMs: 50,
      }) as Stage<number, number>;
      first.link(middle.link(last));
      const pipe = new Pipeline<{ id: number; ms: number }, number>(first, {
        threads: 4,
      });
      const results: number[] = [];
      const reading = (async () => {
        for await (const result of pipe) results.push(result);
      })();
      let id = 0;
      // Put slow tasks until the middle stage has grown.
      while (sizeOf(pipe, 1) < 2) {
        await pipe.put({ id: id++, ms: 2 });
        if (id % 50 === 0) await new Promise((r) => setTimeout(r, 0));
        assert.ok(id < 200_000, "the middle stage never grew");
      }
      const grown = id;
      await waitFor(() => results.length === grown, "the results so far");
      // Idle: back to min.
      await waitFor(
        () => sizeOf(pipe, 1) === 1 && sizeOf(pipe, 2) === 1,
        "both elastic stages back at min",
      );
      await pipe.feed(tasks(id, id + 100, 0));
      await reading;
      await pipe.done;
      const expected = Array.from({ length: id + 100 }, (_, i) => i * 2);
      assert.deepEqual(
        ordered ? results : results.sort((a, b) => a - b),
        expected,
      );
      const stats = pipe.stats();
      const stage = stats.stages[1]!;
      assert.equal(stage.lowestSize, 1);
      assert.ok(stage.highestSize >= 2);
      assert.deepEqual(stage.elastic, { min: 1, max: 3 });
      assert.equal(stage.tasks, id + 100);
      assert.ok(
        stats.resizes.some((r) =>
          r.stage === "middle" && r.to > r.from && /backlog .*busy/.test(r.why)
        ),
      );
      assert.ok(
        stats.resizes.some((r) =>
          r.stage === "middle" && r.to < r.from && /idle/.test(r.why)
        ),
      );
      // Each worker that joined and left has a span of its own.
      assert.ok(stage.workers.some((w) => w.spans.length >= 1));
      assert.ok(noWorkers(stats, 1));
      assert.match(pipe.insights(), /Resizing/);
    },
  });
}

Deno.test("a stage with min 0 starts no worker, starts one when a task arrives, idles down, and wakes again", async () => {
  const pipe = new Pipeline<number, number>(
    new OrderedStage((x: number) => x + 1, { min: 0, max: 2 }, {
      idleMs: 20,
    }),
  );
  // No worker until a task arrives.
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(pipe.stats().stages[0]!.size, 0);
  assert.ok(noWorkers(pipe.stats(), 0));
  await pipe.put(1);
  assert.equal(await pipe.get({ timeout: 30_000 }), 2);
  await waitFor(() => sizeOf(pipe, 0) === 0, "the stage back at 0");
  await waitFor(() => noWorkers(pipe.stats(), 0), "its worker's end");
  await pipe.put(2);
  assert.equal(await pipe.get({ timeout: 30_000 }), 3);
  await pipe.close();
  assert.equal(await pipe.get({ timeout: 30_000 }), null);
  await pipe.done;
  const stats = pipe.stats();
  assert.equal(stats.stages[0]!.lowestSize, 0);
  assert.ok(stats.resizes.filter((r) => r.to > r.from).length >= 2);
});

Deno.test("the stop request reaches a min-0 stage that has no worker", async () => {
  const a = new OrderedStage((x: number) => x, 1);
  const b = new OrderedStage((x: number) => x, { min: 0, max: 3 }, {
    idleMs: 5,
  });
  const pipe = new Pipeline<number, number>(a.link(b));
  await pipe.feed([]);
  assert.deepEqual(await Array.fromAsync(pipe), []);
  await pipe.done;
});

Deno.test("workers that keep leaving and joining lose, duplicate and reorder nothing, and the stop passes while they come and go", async () => {
  for (let run = 0; run < 4; run++) {
    const a = new UnorderedStage(spin, { min: 0, max: 3 }, { idleMs: 1 });
    const b = new OrderedStage((x: number) => x, { min: 0, max: 2 }, {
      idleMs: 1,
    });
    const c = new OrderedStage((x: number) => [x], { min: 1, max: 2 }, {
      idleMs: 1,
    });
    const pipe = new Pipeline<{ id: number; ms: number }, number[]>(
      new OrderedStage(
        (t: { id: number; ms: number }) => t,
        { min: 0, max: 2 },
        {
          idleMs: 1,
        },
      ).link(a.link(b.link(c))),
      { threads: 3 },
    );
    const reading = Array.fromAsync(pipe);
    // Bursts with gaps, so that workers leave between them.
    for (let burst = 0; burst < 8; burst++) {
      for (const task of tasks(burst * 40, burst * 40 + 40, run % 2)) {
        pipe.put(task);
      }
      await new Promise((r) => setTimeout(r, 3 + run));
    }
    await pipe.close();
    const results = (await reading).map(([x]) => x!);
    await pipe.done;
    assert.deepEqual(
      results.sort((x, y) => x - y),
      Array.from({ length: 320 }, (_, i) => i),
    );
    const stats = pipe.stats();
    for (const stage of stats.stages) {
      assert.equal(stage.tasks, 320, stage.name);
      assert.equal(stage.skipped, 0);
    }
  }
});

Deno.test("an ordered elastic stage whose workers come and go keeps task order", async () => {
  const pipe = new Pipeline<{ id: number; ms: number }, number>(
    new OrderedStage(spin, { min: 0, max: 3 }, { idleMs: 1 }).link(
      new OrderedStage((x: number) => x, { min: 1, max: 2 }, { idleMs: 1 }),
    ),
    { threads: 4 },
  );
  const reading = Array.fromAsync(pipe);
  for (let burst = 0; burst < 10; burst++) {
    for (
      const task of tasks(burst * 30, burst * 30 + 30, burst % 3 === 0 ? 1 : 0)
    ) {
      pipe.put(task);
    }
    await new Promise((r) => setTimeout(r, 4));
  }
  await pipe.close();
  assert.deepEqual(await reading, Array.from({ length: 300 }, (_, i) => i));
  await pipe.done;
});

Deno.test("tasks that throw under onError skip or a function are dropped and counted while workers leave and join", async () => {
  const reported: number[] = [];
  const throwing = (x: number) => {
    if (x % 7 === 3) throw new Error(`bad ${x}`);
    return x;
  };
  const a = new OrderedStage(throwing, { min: 0, max: 3 }, {
    idleMs: 1,
    onError: "skip",
  });
  const b = new OrderedStage(
    (x: number) => {
      if (x % 11 === 5) throw new Error(`worse ${x}`);
      return x;
    },
    { min: 1, max: 2 },
    {
      idleMs: 1,
      onError: (error: StageError) => reported.push(error.task!),
    },
  );
  const pipe = new Pipeline<number, number>(a.link(b), { threads: 3 });
  const reading = Array.fromAsync(pipe);
  for (let burst = 0; burst < 6; burst++) {
    for (let i = burst * 50; i < burst * 50 + 50; i++) pipe.put(i);
    await new Promise((r) => setTimeout(r, 3));
  }
  await pipe.close();
  const results = await reading;
  await pipe.done;
  const all = Array.from({ length: 300 }, (_, i) => i);
  const passA = all.filter((x) => x % 7 !== 3);
  assert.deepEqual(results, passA.filter((x) => x % 11 !== 5));
  const stats = pipe.stats();
  assert.equal(stats.stages[0]!.skipped, all.length - passA.length);
  assert.equal(
    stats.stages[1]!.skipped,
    passA.filter((x) => x % 11 === 5).length,
  );
  assert.equal(reported.length, stats.stages[1]!.skipped);
});

Deno.test("a task that throws under onError fail fails the pipeline from an elastic stage", async () => {
  const pipe = new Pipeline<number, number>(
    new OrderedStage(
      (x: number) => {
        if (x === 120) throw new Error("no 120");
        return x;
      },
      { min: 0, max: 3 },
      { idleMs: 1, name: "picky" },
    ),
  );
  const feeding = pipe.feed(Array.from({ length: 400 }, (_, i) => i)).catch(
    (error) => error,
  );
  await assert.rejects(Array.fromAsync(pipe), (error: unknown) => {
    assert.ok(error instanceof StageError);
    assert.equal(error.stage, "picky");
    assert.equal(error.task, 120);
    return true;
  });
  await feeding;
  await pipe.done.catch(() => {});
  assert.equal(pipe.stats().end, "failure");
});

Deno.test("tasks that run past taskTimeout have their worker replaced in an elastic stage, and the others all arrive", async () => {
  const pipe = new Pipeline<number, number>(
    new UnorderedStage(
      async (x: number) => {
        if (x === 10 || x === 40) {
          await new Promise((r) => setTimeout(r, 60_000));
        }
        return x;
      },
      { min: 0, max: 3 },
      { idleMs: 5, taskTimeout: 300, onError: "skip" },
    ),
  );
  await pipe.feed(Array.from({ length: 80 }, (_, i) => i));
  const results = await Array.fromAsync(pipe);
  await pipe.done;
  assert.deepEqual(
    results.sort((a, b) => a - b),
    Array.from({ length: 80 }, (_, i) => i).filter((x) => x !== 10 && x !== 40),
  );
  assert.equal(pipe.stats().stages[0]!.skipped, 2);
});

Deno.test("restart and concurrency keep their meaning in an elastic stage whose workers come and go", async () => {
  const pipe = new Pipeline<number, number>(
    new UnorderedStage(
      async (x: number) => {
        // A worker lost in its task: under restart, a new one takes its place.
        if (x === 50 || x === 150) globalThis.close();
        if (x % 3 === 0) await new Promise((r) => setTimeout(r, 1));
        return x;
      },
      { min: 0, max: 3 },
      {
        idleMs: 1,
        restart: true,
        onError: "skip",
        concurrency: 4,
      },
    ).link(
      new OrderedStage((x: number) => x, { min: 0, max: 2 }, { idleMs: 1 }),
    ),
    { threads: 4 },
  );
  const reading = Array.fromAsync(pipe);
  for (let burst = 0; burst < 5; burst++) {
    for (let i = burst * 40; i < burst * 40 + 40; i++) pipe.put(i);
    await new Promise((r) => setTimeout(r, 5));
  }
  await pipe.close();
  const results = (await reading).sort((a, b) => a - b);
  await pipe.done;
  const stats = pipe.stats();
  const stage = stats.stages[0]!;
  // Each lost worker drops what it held: its task, and up to 3 others in
  // flight with it; every other task arrives once.
  assert.ok(!results.includes(50) && !results.includes(150));
  assert.equal(new Set(results).size, results.length);
  assert.equal(results.length + stage.skipped, 200);
  assert.ok(stage.skipped >= 2 && stage.skipped <= 8, `${stage.skipped}`);
  assert.equal(stage.workers.reduce((sum, w) => sum + w.restarts, 0), 2);
});

Deno.test("forks, joins and maxBacklog keep their meaning across elastic stages", async () => {
  const top = new OrderedStage((x: number) => x, { min: 0, max: 3 }, {
    idleMs: 1,
  });
  const left = new OrderedStage((x: number) => x * 2, { min: 0, max: 2 }, {
    idleMs: 1,
    maxBacklog: 4,
  });
  const right = new UnorderedStage(
    (x: number) => x * 2 + 1,
    { min: 1, max: 2 },
    {
      idleMs: 1,
    },
  );
  const join = new UnorderedStage((x: number) => x, { min: 0, max: 2 }, {
    idleMs: 1,
    maxBacklog: 3,
  });
  top.link(left.link(join)).link(right.link(join));
  const pipe = new Pipeline<number, number>(top, { threads: 3 });
  const reading = Array.fromAsync(pipe);
  for (let burst = 0; burst < 5; burst++) {
    for (let i = burst * 40; i < burst * 40 + 40; i++) pipe.put(i);
    await new Promise((r) => setTimeout(r, 4));
  }
  await pipe.close();
  const results = (await reading).sort((a, b) => a - b);
  await pipe.done;
  // Each task reaches the join twice: once as 2x, once as 2x + 1.
  assert.deepEqual(results, Array.from({ length: 400 }, (_, i) => i));
});

Deno.test({
  name: "terminate() while an elastic stage grows ends the run",
  ignore: oneCore,
  fn: async () => {
    const pipe = new Pipeline<{ id: number; ms: number }, number>(
      new UnorderedStage(spin, { min: 1, max: 3 }, { idleMs: 5 }),
      { threads: 3 },
    );
    const reading = Array.fromAsync(pipe);
    let id = 0;
    while (sizeOf(pipe, 0) < 2) {
      await pipe.put({ id: id++, ms: 2 });
      assert.ok(id < 200_000, "the stage never grew");
    }
    pipe.terminate();
    await reading;
    await pipe.done;
    const stats = pipe.stats();
    assert.equal(stats.end, "terminate");
    assert.ok(noWorkers(stats, 0));
  },
});

Deno.test({
  name:
    "when the budget is spent, a stage that holds the run back takes a worker from one that mostly waits",
  ignore: oneCore,
  fn: async () => {
    // Phase one: stage a is the expensive one and grows (the budget of one
    // worker is then spent); phase two: stage b is, and a must give its worker.
    type Task = { id: number; a: number; b: number };
    const work = (ms: number) => {
      const end = performance.now() + ms;
      while (performance.now() < end) { /* work */ }
    };
    const a = new UnorderedStage(
      (t: Task) => {
        const end = performance.now() + t.a;
        while (performance.now() < end) { /* work */ }
        return t;
      },
      { min: 1, max: 3 },
      { name: "a", idleMs: 60_000, maxBacklog: 64 },
    );
    const b = new UnorderedStage(
      (t: Task) => {
        const end = performance.now() + t.b;
        while (performance.now() < end) { /* work */ }
        return t.id;
      },
      { min: 1, max: 3 },
      { name: "b", idleMs: 60_000, maxBacklog: 64 },
    );
    void work;
    const pipe = new Pipeline<Task, number>(a.link(b), { threads: 1 });
    let read = 0;
    const reading = (async () => {
      for await (const _ of pipe) read++;
    })();
    let id = 0;
    const putUntil = async (task: Omit<Task, "id">, done: () => boolean) => {
      while (!done()) {
        await pipe.put({ id: id++, ...task });
        if (id % 20 === 0) await new Promise((r) => setTimeout(r, 0));
        assert.ok(id < 500_000, "the stages were never resized");
      }
    };
    await putUntil({ a: 2, b: 0 }, () => sizeOf(pipe, 0) === 2);
    await putUntil({ a: 0, b: 2 }, () => sizeOf(pipe, 1) === 2);
    await pipe.close();
    await reading;
    await pipe.done;
    assert.equal(read, id);
    const stats = pipe.stats();
    const moved = stats.resizes.find((r) =>
      r.stage === "a" && r.to < r.from && /a worker for b/.test(r.why)
    );
    assert.ok(moved, JSON.stringify(stats.resizes));
    // Never more than one worker above the mins at once.
    assert.equal(stats.stages[0]!.highestSize, 2);
    assert.equal(stats.stages[1]!.highestSize, 2);
  },
});

Deno.test("elastic sizes and options are checked", () => {
  const f = (x: number) => x;
  assert.throws(() => new OrderedStage(f, { min: 2, max: 1 }), RangeError);
  assert.throws(() => new OrderedStage(f, { min: -1, max: 1 }), RangeError);
  assert.throws(() => new OrderedStage(f, { min: 0, max: 0 }), RangeError);
  assert.throws(
    () => new OrderedStage(f, { min: 0, max: 2, most: 3 } as never),
    TypeError,
  );
  assert.throws(() => new OrderedStage(f, 2, { idleMs: 100 }), TypeError);
  assert.throws(
    () => new OrderedStage(f, { min: 0, max: 2 }, { idleMs: 0 }),
    RangeError,
  );
  assert.throws(
    () => new Pipeline(new OrderedStage(f), { threads: 0 }),
    RangeError,
  );
  // A remote stage keeps its hosts' pools: it cannot be elastic.
  const cluster = { openRun() {} } as unknown as StageOptions["cluster"];
  assert.throws(
    () => new OrderedStage(f, { min: 1, max: 4 }, { cluster }),
    TypeError,
  );
  const stage = new OrderedStage(f, { min: 1, max: 4 });
  assert.deepEqual([stage.size, stage.minSize], [4, 1]);
});
