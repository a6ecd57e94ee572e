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

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** Awaits a timer of a few ms that depends on the task, so tasks end out of order. */
async function uneven(x: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, (x * 7) % 13));
  return x;
}

/** Words: [in flight now, most in flight at once]. */
function makeWords(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(8));
}

/** Counts how many of its tasks are in flight at once, on shared words. */
class Gauge extends UnorderedWorker<number, number> {
  words: Int32Array;
  constructor(words: Int32Array) {
    super();
    this.words = words;
  }
  async doTask(task: number) {
    const now = Atomics.add(this.words, 0, 1) + 1;
    for (let most = Atomics.load(this.words, 1); now > most;) {
      const seen = Atomics.compareExchange(this.words, 1, most, now);
      if (seen === most) break;
      most = seen;
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
    Atomics.sub(this.words, 0, 1);
    return task;
  }
}

Deno.test("Stage concurrency: an ordered stage still emits results in task order, with uneven task times", async () => {
  for (const size of [1, 2]) {
    const pipe = new Pipeline(
      new OrderedStage(uneven, size, { concurrency: 8 }),
    );
    pipe.feed(range(200));
    assert.deepEqual(await Array.fromAsync(pipe), range(200));
  }
});

Deno.test("Stage concurrency: an unordered stage emits results as they finish", async () => {
  const pipe = new Pipeline(
    new UnorderedStage(
      async (x: number) => {
        await new Promise((resolve) => setTimeout(resolve, 40 - 10 * x));
        return x;
      },
      1,
      { concurrency: 4 },
    ),
  );
  pipe.feed(range(4));
  assert.deepEqual(await Array.fromAsync(pipe), [3, 2, 1, 0]);
});

Deno.test("Stage concurrency: a worker runs at most `concurrency` tasks at once, and uses them all", async () => {
  for (const [size, concurrency] of [[1, 1], [1, 6], [2, 3]] as const) {
    const words = makeWords();
    const pipe = new Pipeline(
      new Stage(Gauge, size, { args: [words], concurrency }),
    );
    pipe.feed(range(60));
    assert.equal((await Array.fromAsync(pipe)).length, 60);
    assert.equal(Atomics.load(words, 1), size * concurrency);
  }
});

Deno.test("Stage concurrency: the stop waits for every task in flight", async () => {
  const pipe = new Pipeline(
    new OrderedStage(
      async (x: number) => {
        await new Promise((resolve) => setTimeout(resolve, 30));
        return x;
      },
      1,
      { concurrency: 16 },
    ),
  );
  for (const x of range(16)) pipe.put(x);
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), range(16));
  await pipe.done;
});

Deno.test('Stage concurrency, onError "skip": an ordered stage drops the failed tasks and keeps its order', async () => {
  const stage = new OrderedStage(
    async (x: number) => {
      await new Promise((resolve) => setTimeout(resolve, (x * 7) % 13));
      if (x % 10 === 3) throw new Error(`bad ${x}`);
      return x;
    },
    1,
    { concurrency: 8, onError: "skip" },
  );
  const pipe = new Pipeline(stage);
  pipe.feed(range(100));
  assert.deepEqual(
    await Array.fromAsync(pipe),
    range(100).filter((x) => x % 10 !== 3),
  );
  assert.equal(stage.skipped, 10);
});

Deno.test('Stage concurrency, onError "fail": a rejected task fails the pipeline with a StageError naming it', async () => {
  const pipe = new Pipeline(
    new OrderedStage(
      async (x: number) => {
        await new Promise((resolve) => setTimeout(resolve, (x * 7) % 13));
        if (x === 17) throw new Error("seventeen");
        return x;
      },
      1,
      { concurrency: 8, name: "async" },
    ),
  );
  pipe.feed(range(100)).catch(() => {});
  await assert.rejects(Array.fromAsync(pipe), (error: unknown) => {
    assert.ok(error instanceof StageError);
    assert.equal(error.stage, "async");
    assert.equal(error.task, 17);
    assert.match((error.cause as Error).message, /seventeen/);
    return true;
  });
});

Deno.test("Stage concurrency: an error thrown while the rings are full is not dropped", async () => {
  // 4 KiB rings of 2 KiB results, nobody reading: the worker blocks writing
  // results while other tasks reject.
  const pipe = new Pipeline(
    new OrderedStage(
      async (x: number) => {
        await new Promise((resolve) => setTimeout(resolve, 1));
        if (x === 40) throw new Error("forty");
        return new Uint8Array(2048);
      },
      1,
      { concurrency: 8 },
    ),
    { ringBytes: 4096 },
  );
  pipe.feed(range(100)).catch(() => {});
  await new Promise((resolve) => setTimeout(resolve, 100));
  await assert.rejects(Array.fromAsync(pipe), (error: unknown) => {
    assert.ok(error instanceof StageError);
    assert.equal(error.task, 40);
    return true;
  });
});

Deno.test("Stage concurrency with taskTimeout: a task that awaits past it is skipped, and its late end is ignored", async () => {
  const stage = new OrderedStage(
    async (x: number) => {
      await new Promise((resolve) => setTimeout(resolve, x === 5 ? 300 : 5));
      return x;
    },
    1,
    { concurrency: 4, taskTimeout: 100, onError: "skip" },
  );
  const pipe = new Pipeline(stage);
  pipe.feed(range(20));
  assert.deepEqual(
    await Array.fromAsync(pipe),
    range(20).filter((x) => x !== 5),
  );
  assert.equal(stage.skipped, 1);
  await pipe.done;
});

/** putResult() before and after its first await. */
class Putter extends OrderedWorker<number, number> {
  async doTask(task: number) {
    this.putResult(task * 10);
    await null;
    if (task === 2) this.putResult(-1);
    return task;
  }
}

Deno.test("Stage concurrency: putResult() works before a task's first await, and fails the task after it", async () => {
  const pipe = new Pipeline(new Stage(Putter, 1, { concurrency: 4 }));
  pipe.feed(range(4)).catch(() => {});
  await assert.rejects(Array.fromAsync(pipe), (error: unknown) => {
    assert.ok(error instanceof StageError);
    assert.equal(error.task, 2);
    assert.match(String(error.message), /after an await/);
    return true;
  });
  const ok = new Pipeline(new Stage(Putter, 1, { concurrency: 4 }));
  ok.feed([0, 1]);
  assert.deepEqual(await Array.fromAsync(ok), [0, 0, 10, 1]);
});

Deno.test("Stage concurrency: a bad value throws a RangeError naming the option and the value", () => {
  for (const bad of [0, -1, 1.5, NaN, "2"]) {
    assert.throws(
      () => new OrderedStage(uneven, 1, { concurrency: bad as number }),
      (error: unknown) =>
        error instanceof RangeError &&
        error.message.includes("'options.concurrency'"),
    );
  }
});
