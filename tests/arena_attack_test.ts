/**
 * Attacks on the arena (issue 28), as a user would make them: many workers
 * allocating and freeing at once in debug mode with no two live buffers
 * overlapping, many small buffers whose space comes back, alloc after the
 * end, and the figures after terminate().
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  PipelineClosedError,
  Stage,
  UnorderedStage,
  UnorderedWorker,
} from "../mod.ts";
import { Arena } from "../lib/shared_memory/arena.ts";
import { within } from "./support/bounded.ts";

interface Churned {
  id: number;
  bytes: Uint8Array;
  broken: string[];
}

/** Allocates several buffers, stamps them, looks again after the others ran, returns one. */
class Churn extends UnorderedWorker<Churned, Churned> {
  /** Fills `bytes` with the 32-bit stamp `id` (little-endian, whole words). */
  static stamp(bytes: Uint8Array, id: number): void {
    for (let i = 0; i + 4 <= bytes.length; i += 4) {
      bytes[i] = id & 255;
      bytes[i + 1] = (id >>> 8) & 255;
      bytes[i + 2] = (id >>> 16) & 255;
      bytes[i + 3] = (id >>> 24) & 255;
    }
  }

  /** The first word of `bytes` that is not the stamp `id`, or -1. */
  static stampBroken(bytes: Uint8Array, id: number): number {
    for (let i = 0; i + 4 <= bytes.length; i += 4) {
      const word = bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) |
        (bytes[i + 3]! << 24);
      if (word !== (id | 0)) return i;
    }
    return -1;
  }

  doTask(task: Churned): Churned {
    const broken: string[] = [];
    // The task's own buffer must still hold the main thread's stamp.
    if (Churn.stampBroken(task.bytes, task.id) >= 0) {
      broken.push(`in ${task.id}`);
    }
    const mine: Uint8Array[] = [];
    for (let j = 0; j < 6; j++) {
      const view = this.alloc(((task.id + j) % 5 + 1) * 3000);
      Churn.stamp(view, task.id * 8 + j + 1);
      mine.push(view);
    }
    for (let j = 0; j < mine.length; j++) {
      if (Churn.stampBroken(mine[j]!, task.id * 8 + j + 1) >= 0) {
        broken.push(`own ${task.id}/${j}`);
      }
    }
    // One goes on as the result; the others come back when the task ends.
    const out = mine[task.id % 6]!;
    Churn.stamp(out, -task.id - 1);
    return { id: task.id, bytes: out, broken: task.broken.concat(broken) };
  }
}

Deno.test("many workers allocating and freeing at once never hand out overlapping live buffers (debug mode)", async () => {
  const n = 3000;
  const pipe = new Pipeline<Churned, Churned>(
    new Stage(Churn, 4),
    // Small enough that space is reused all the time, and sometimes full.
    { arenaBytes: 256 * Arena.BLOCK, arenaDebug: true },
  );
  const feeding = (async () => {
    for (let id = 0; id < n; id++) {
      const bytes = await pipe.alloc((id % 3 + 1) * 2500);
      Churn.stamp(bytes, id);
      await pipe.put({ id, bytes, broken: [] });
    }
    await pipe.close();
  })();
  const broken: string[] = [];
  const held: Churned[] = [];
  let count = 0;
  const reading = (async () => {
    for await (const result of pipe) {
      count++;
      broken.push(...result.broken);
      held.push(result);
      // Hold a few results a while, so that workers allocate around them.
      if (held.length > 8) {
        const old = held.shift()!;
        if (Churn.stampBroken(old.bytes, -old.id - 1) >= 0) {
          broken.push(`result ${old.id}`);
        }
        pipe.free(old.bytes);
      }
    }
  })();
  await within(Promise.all([feeding, reading]), "the churn", 120_000);
  for (const old of held) {
    if (Churn.stampBroken(old.bytes, -old.id - 1) >= 0) {
      broken.push(`result ${old.id}`);
    }
    pipe.free(old.bytes);
  }
  await within(pipe.done, "done");
  assert.equal(count, n);
  assert.deepEqual(broken, []);
  const arena = pipe.stats().arena;
  assert.equal(arena.live, 0);
  assert.equal(arena.usedBytes, 0);
});

Deno.test("100k buffers of 5 KiB through a pipeline, each freed once read: the space keeps coming back", async () => {
  const n = 100_000;
  const first = new OrderedStage((bytes: Uint8Array) => bytes, 2);
  first.link(new UnorderedStage((bytes: Uint8Array) => bytes));
  const pipe = new Pipeline<Uint8Array, Uint8Array>(first, {
    // Room for 64 buffers of two blocks: reused about 1500 times each.
    arenaBytes: 128 * Arena.BLOCK,
  });
  const feeding = (async () => {
    for (let i = 0; i < n; i++) {
      const bytes = await pipe.alloc(5 * 1024);
      bytes[0] = i & 255;
      await pipe.put(bytes);
    }
    await pipe.close();
  })();
  let count = 0;
  const reading = (async () => {
    for await (const bytes of pipe) {
      count++;
      pipe.free(bytes);
    }
  })();
  await within(Promise.all([feeding, reading]), "the run", 300_000);
  await within(pipe.done, "done");
  assert.equal(count, n);
  const arena = pipe.stats().arena;
  assert.equal(arena.allocations, n);
  assert.equal(arena.live, 0);
  assert.equal(arena.usedBytes, 0);
  assert.ok(arena.highBytes <= 128 * Arena.BLOCK);
});

Deno.test("alloc and allocSync after the pipeline ended reject with a PipelineClosedError; free still works", async () => {
  const pipe = new Pipeline<Uint8Array, Uint8Array>(
    new OrderedStage((bytes: Uint8Array) => bytes),
    { arenaBytes: 16 * Arena.BLOCK },
  );
  await pipe.put(pipe.allocSync(10));
  await pipe.close();
  const [result] = await within(Array.fromAsync(pipe), "the results");
  await within(pipe.done, "done");
  assert.throws(() => pipe.allocSync(10), PipelineClosedError);
  await assert.rejects(
    within(pipe.alloc(10), "alloc after the end"),
    PipelineClosedError,
  );
  pipe.free(result!);
  assert.equal(pipe.stats().arena.live, 0);
});

Deno.test("an alloc waiting for room when the stop is requested and the run ends rejects instead of waiting for ever", async () => {
  const pipe = new Pipeline<Uint8Array, number>(
    new OrderedStage((bytes: Uint8Array) => bytes.length),
    { arenaBytes: 4 * Arena.BLOCK },
  );
  const held = pipe.allocSync(4 * Arena.BLOCK); // the program keeps it
  const waiting = pipe.alloc(100);
  await pipe.close();
  assert.deepEqual(await within(Array.fromAsync(pipe), "the results"), []);
  await within(pipe.done, "done");
  await assert.rejects(
    within(waiting, "the waiting alloc"),
    PipelineClosedError,
  );
  pipe.free(held);
});

// Left (MPIPE_REPRO=1): after terminate() the references held by records in
// the rings and by killed workers are never dropped, so stats().arena keeps
// showing them live (19 of 20 here). The issue says the space comes back
// when the pipeline is terminated. A fix: once every worker is gone, the
// main thread resets each allocation's count to its own references.
Deno.test({
  name:
    "terminate() with buffers in the rings and in tasks: the figures show none live once done",
  ignore: Deno.env.get("MPIPE_REPRO") !== "1",
}, async () => {
  const first = new OrderedStage((bytes: Uint8Array) => {
    const end = Date.now() + 50;
    while (Date.now() < end);
    return bytes;
  });
  first.link(new OrderedStage((bytes: Uint8Array) => bytes));
  const pipe = new Pipeline<Uint8Array, Uint8Array>(first, {
    arenaBytes: 64 * Arena.BLOCK,
  });
  for (let i = 0; i < 20; i++) await pipe.put(pipe.allocSync(3000));
  const read = await within(pipe.get(), "a result");
  pipe.terminate();
  await within(pipe.done.catch(() => {}), "done");
  pipe.free(read!); // the program's still, until freed
  const arena = pipe.stats().arena;
  assert.equal(arena.live, 0, JSON.stringify(arena));
  assert.equal(arena.usedBytes, 0);
});

class Hoard extends OrderedWorker<number, number> {
  doTask(x: number): number {
    if (x !== 0) return x;
    // More buffers than a worker's table records (Arena.TABLE), then past
    // the taskTimeout (a bounded busy loop: a killed thread runs it out).
    for (let i = 0; i < 1100; i++) this.alloc(1);
    const end = performance.now() + 2000;
    while (performance.now() < end);
    return x;
  }
}

// A worker lost past its taskTimeout while holding more than Arena.TABLE
// (1024) buffers: those past its table stay live until the pipeline is
// dropped, and stats().arena reports them as untracked.
Deno.test("a lost worker's buffers past its table come back, or are reported as untracked", async () => {
  const pipe = new Pipeline<number, number>(
    new Stage(Hoard, 1, { taskTimeout: 500, onError: "skip" }),
    { arenaBytes: 2048 * Arena.BLOCK },
  );
  await pipe.put(0);
  await pipe.put(1);
  await pipe.put(null);
  assert.deepEqual(await within(Array.fromAsync(pipe), "the results"), [1]);
  await within(pipe.done, "done");
  const arena = pipe.stats().arena;
  assert.ok(arena.untracked > 0, JSON.stringify(arena));
  assert.ok(arena.live <= arena.untracked, JSON.stringify(arena));
});
