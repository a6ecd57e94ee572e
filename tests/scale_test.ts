// Cost that stays flat as the work grows (issue 22): the input queue at millions of entries,
// a million un-awaited puts, and a failure among hundreds of thousands of waiting puts. A
// quadratic path shows here as a test that does not end (CI's timeout fails it).

import assert from "node:assert/strict";
import {
  OrderedStage,
  Pipeline,
  StageError,
  TaskWorker,
  UnorderedStage,
} from "../mod.ts";
import { Fifo } from "../lib/main_thread/fifo.ts";
import { within } from "./support/bounded.ts";

// ---- Fifo ----

Deno.test("Fifo keeps order through millions of interleaved pushes and shifts", () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    let state = seed;
    const random = () => (state = (state * 1103515245 + 12345) >>> 0) / 2 ** 32;
    const fifo = new Fifo<number>();
    let pushed = 0;
    let shifted = 0;
    while (pushed < 2_000_000) {
      // Bursts of both kinds, of sizes around a chunk, so chunks fill,
      // empty and are dropped in every order.
      const burst = Math.floor(random() * 3000);
      for (let i = 0; i < burst; i++) fifo.push(pushed++);
      const take = Math.floor(random() * 3000);
      for (let i = 0; i < take && fifo.length > 0; i++) {
        assert.equal(fifo.first, shifted);
        assert.equal(fifo.shift(), shifted++);
      }
      assert.equal(fifo.length, pushed - shifted);
      if (fifo.length > 0) assert.equal(fifo.last, pushed - 1);
    }
    const rest = fifo.clear();
    assert.equal(rest.length, pushed - shifted);
    rest.forEach((x, i) => assert.equal(x, shifted + i));
    assert.equal(fifo.shift(), undefined);
    assert.equal(fifo.first, undefined);
  }
});

// ---- the input queue, as the cookbook uses it ----

Deno.test("Pipeline.put: 1,000,000 un-awaited puts through two ordered stages give every result in order", async () => {
  const n = 1_000_000;
  const pipe = new Pipeline<number, number>(
    new OrderedStage((x: number) => x + 1, 2).link(
      new OrderedStage((x: number) => x * 2, 2),
    ),
  );
  for (let i = 0; i < n; i++) pipe.put(i);
  pipe.put(null);
  let k = 0;
  for await (const r of pipe) {
    if (r !== 2 * (k + 1)) assert.fail(`result ${k} was ${r}`);
    k++;
  }
  assert.equal(k, n);
  await pipe.done;
});

Deno.test("Pipeline.put: a failure among 300,000 waiting puts reaches the reader's catch, and every put settles", async () => {
  const n = 300_000;
  const pipe = new Pipeline<number, number>(
    // Slow tasks, so that most puts still wait when the failure arrives.
    new UnorderedStage(async (x: number) => {
      if (x === 77) throw new Error("task 77 broke");
      await new Promise((resolve) => setTimeout(resolve, 1));
      return x;
    }, 2),
  );
  let resolved = 0;
  let rejected = 0;
  for (let i = 0; i < n; i++) {
    pipe.put(i).then(() => resolved++, () => rejected++);
  }
  pipe.put(null).catch(() => {});
  await assert.rejects(
    async () => {
      for await (const _ of pipe) { /* read */ }
    },
    (error) =>
      error instanceof StageError && /task 77 broke/.test(error.message),
  );
  await pipe.done.catch(() => {});
  // Let the settlements' callbacks run.
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(resolved + rejected, n);
  assert.ok(rejected > 0, "the puts still waiting at the failure are rejected");
});

/**
 * Throws at task `failAt`, and counts in shared memory the tasks that began
 * after that throw (`words[1]`). Self-contained: it ships by source.
 */
class FailsAt extends TaskWorker<number, number> {
  words: Int32Array;
  failAt: number;
  constructor(words: Int32Array, failAt: number) {
    super();
    this.words = words;
    this.failAt = failAt;
  }
  doTask(x: number): number {
    if (Atomics.load(this.words, 0) !== 0) Atomics.add(this.words, 1, 1);
    if (x === this.failAt) {
      Atomics.store(this.words, 0, 1);
      throw new Error(`task ${x} broke`);
    }
    return x;
  }
}

for (const ordered of [false, true]) {
  const kind = ordered ? "OrderedStage" : "UnorderedStage";
  Deno.test(`Pipeline.put: after a task of an ${kind} fails among 300,000 un-awaited puts, the stage stops taking tasks, the reader's catch comes after what was made, and every put settles`, async () => {
    const n = 300_000;
    const failAt = 77;
    // Small rings: what they hold before the failure is small beside n.
    const ringBytes = 1 << 16;
    const words = new Int32Array(new SharedArrayBuffer(8));
    const options = { args: [words, failAt] };
    const stage = ordered
      ? new OrderedStage(FailsAt, 2, options)
      : new UnorderedStage(FailsAt, 2, options);
    const pipe = new Pipeline<number, number>(stage, { ringBytes });
    // Puts that wait together share one promise: watching each distinct one
    // (after the loop, so that none is watched while puts join it) sees every
    // put settle.
    const promises = new Map<Promise<void>, number>();
    for (let i = 0; i < n; i++) {
      const put = pipe.put(i);
      promises.set(put, (promises.get(put) ?? 0) + 1);
    }
    pipe.put(null).catch(() => {});
    let read = 0;
    let sum = 0;
    await within(
      assert.rejects(
        async () => {
          for await (const r of pipe) {
            read++;
            // Some work per result: a reader slower than the workers always
            // finds a result ready, and never lets a message in by itself.
            for (let j = 0; j < 2000; j++) sum += r ^ j;
          }
        },
        (error) =>
          error instanceof StageError && /task 77 broke/.test(error.message),
      ),
      "the reader's catch",
      60_000,
    );
    await within(pipe.done.catch(() => {}), "done");
    let entered = 0;
    let rejected = 0;
    await within(
      Promise.all(
        [...promises].map(([put, puts]) =>
          put.then(() => entered += puts, () => rejected += puts)
        ),
      ),
      "every put settles",
    );
    assert.equal(entered + rejected, n);
    // A put that waited with others rejects if any of them had not entered.
    assert.ok(entered <= pipe.stats().put);
    // A ring holds at most capacity / 16 records (a frame is 16 bytes).
    const ringRecords = ringBytes / 16;
    // The other worker finishes the claim it holds (16 tasks at most), and
    // takes no more: not a ring's worth, nor the tasks put after the failure.
    // (Before the stop came through shared memory, it ran on until the
    // reader let the failure's message in: every task put, here.)
    const after = Atomics.load(words, 1);
    assert.ok(
      after <= ringRecords / 4,
      `${after} tasks began after task ${failAt} failed`,
    );
    // The reader reads at most what was made before the failure, which the
    // rings bound, not what was put after it.
    assert.ok(
      read <= failAt + 2 * ringRecords,
      `the reader read ${read} results before the failure`,
    );
    assert.ok(rejected > n / 2, `only ${rejected} of ${n} puts were rejected`);
    assert.ok(sum !== 0.5); // the work is used
  });
}

Deno.test("Pipeline.put: small, large, signalled and withdrawn puts waiting together keep their order", async () => {
  const pipe = new Pipeline<string | number, string | number>(
    new OrderedStage((x: string | number) => x),
  );
  const big = "x".repeat(300_000); // larger than a packed run takes, and than the ring's quarter
  // Each withdrawn put is aborted right after it was put behind a large task
  // that cannot have entered yet; if it entered all the same, it must arrive.
  const expected: (Promise<string | number | undefined> | string | number)[] =
    [];
  let withdrawals = 0;
  for (let i = 0; i < 50_000; i++) {
    if (i % 10_000 === 5) {
      pipe.put(big);
      expected.push(big);
    } else if (i % 10_000 === 6) {
      const withdrawn = new AbortController();
      expected.push(
        pipe.put(-i, { signal: withdrawn.signal }).then(
          () => -i,
          (error) => {
            assert.equal(error.message, "gone");
            withdrawals++;
            return undefined;
          },
        ),
      );
      withdrawn.abort(new Error("gone"));
    } else if (i % 1000 === 3) {
      const kept = new AbortController();
      expected.push(pipe.put(i, { signal: kept.signal }).then(() => i));
    } else {
      pipe.put(i);
      expected.push(i);
    }
  }
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  const arrived = (await Promise.all(expected)).filter((x) => x !== undefined);
  assert.ok(withdrawals > 0, "some withdrawn put waited");
  assert.equal(results.length, arrived.length);
  assert.deepEqual(results, arrived);
});

Deno.test("Pipeline.put: waiting puts that share one signal cost O(1) each (one abort listener on it, not one per put), and its abort withdraws every put still waiting", async () => {
  const pipe = new Pipeline<number, number>(
    new OrderedStage((x: number) => x),
    { ringBytes: 4096 }, // most puts wait
  );
  const controller = new AbortController();
  const signal = controller.signal;
  // An EventTarget scans its listeners on every add and remove: one listener
  // per waiting put made n waiting puts cost O(n^2).
  let listeners = 0;
  let most = 0;
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = (...args: Parameters<typeof add>) => {
    most = Math.max(most, ++listeners);
    add(...args);
  };
  signal.removeEventListener = (...args: Parameters<typeof remove>) => {
    listeners--;
    remove(...args);
  };
  const n = 5000;
  const reason = new Error("withdrawn");
  const outcomes: Promise<number | undefined>[] = [];
  for (let i = 0; i < n; i++) {
    outcomes.push(
      pipe.put(i, { signal }).then(() => i, (error) => {
        assert.equal(error, reason);
        return undefined;
      }),
    );
  }
  assert.ok(most <= 1, `${most} abort listeners on one signal`);
  controller.abort(reason);
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  const entered = (await Promise.all(outcomes)).filter((i) => i !== undefined);
  assert.ok(entered.length < n, "the abort withdrew the puts still waiting");
  assert.deepEqual(results, entered);
  await pipe.done;
});
