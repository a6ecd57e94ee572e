/**
 * The arena (issue 28): large binary payloads by reference through chains,
 * forks, joins, filters, ordered, unordered and concurrent stages; their
 * space back under failure, terminate(), worker loss and taskTimeout; a full
 * arena that does not deadlock; use after put caught in debug mode.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  ArenaFullError,
  FilterStage,
  OrderedStage,
  OrderedWorker,
  Pipeline,
  PipelineClosedError,
  Stage,
  UnorderedStage,
} from "../mod.ts";
import { Arena } from "../lib/shared_memory/arena.ts";
import { Decoder, Encoder } from "../lib/shared_memory/codec.ts";
import { within } from "./support/bounded.ts";

/** Marks byte `at` of the buffer (the stage's number, from its first byte) and passes it on. */
function mark(bytes: Uint8Array): Uint8Array {
  bytes[bytes[0]!]! = 0xa0 + bytes[0]!;
  bytes[0]!++;
  return bytes;
}

/** Reads every result, frees each, and returns what `look` saw of them. */
async function drain<T>(
  pipe: Pipeline<unknown, Uint8Array>,
  look: (bytes: Uint8Array) => T,
): Promise<T[]> {
  const seen: T[] = [];
  for await (const bytes of pipe) {
    seen.push(look(bytes));
    pipe.free(bytes); // an ordinary array too (an alloc that found no room)
  }
  return seen;
}

// ---- by reference ----

Deno.test("a buffer goes through a three-stage chain on the same memory, and its space comes back once freed", async () => {
  const first = new OrderedStage(mark);
  first.link(new OrderedStage(mark, 2).link(new OrderedStage(mark)));
  const pipe = new Pipeline<Uint8Array, Uint8Array>(first, {
    arenaDebug: true,
  });
  const bytes = await pipe.alloc(1 << 20);
  bytes[0] = 1;
  const offset = bytes.byteOffset;
  await pipe.put(bytes);
  await pipe.close();
  const result = (await within(pipe.get(), "the result"))!;
  assert.ok(result.buffer instanceof SharedArrayBuffer);
  assert.equal(result.byteOffset, offset);
  assert.deepEqual([...result.subarray(0, 4)], [4, 0xa1, 0xa2, 0xa3]);
  assert.equal(pipe.stats().arena.live, 1);
  pipe.free(result);
  assert.equal(pipe.stats().arena.live, 0);
  assert.equal(await pipe.get(), null);
  await pipe.done;
});

/** A task that gathers each stage's count of bytes its codec copied. */
interface Counted {
  bytes: Uint8Array;
  copied: number[];
}

function count(task: Counted): Counted {
  const copied = (globalThis as unknown as Record<symbol, () => number>)[
    Symbol.for("mpipe.copiedBytes")
  ]!;
  task.copied.push(copied());
  return task;
}

Deno.test("a buffer on the arena crosses a three-stage chain with no byte run copied by the codec; an ordinary one is copied at each hop", async () => {
  for (const arena of [true, false]) {
    const first = new OrderedStage(count);
    first.link(new OrderedStage(count).link(new OrderedStage(count)));
    const pipe = new Pipeline<Counted, Counted>(first);
    const size = 8 << 20;
    const bytes = arena ? pipe.allocSync(size) : new Uint8Array(size);
    bytes[size - 1] = 9;
    const before = Encoder.copiedBytes;
    await pipe.put({ bytes, copied: [] });
    await pipe.close();
    const result = (await within(pipe.get(), "the result"))!;
    assert.equal(result.bytes[size - 1], 9);
    const main = Encoder.copiedBytes - before;
    if (arena) {
      // Each stage counted what it copied before passing the task on: none.
      assert.deepEqual([main, ...result.copied], [0, 0, 0, 0]);
      pipe.free(result.bytes);
    } else {
      // The main thread copies it in and out; each stage, a thread of its
      // own, copies it in (and out, after it counted).
      assert.equal(main, 2 * size);
      assert.deepEqual(result.copied, [size, size, size]);
    }
    await pipe.done;
  }
});

Deno.test("a fork shares one buffer among its branches, with a count that frees it after the last", async () => {
  const root = new OrderedStage((bytes: Uint8Array) => bytes);
  root.link(new OrderedStage((bytes: Uint8Array) => bytes));
  root.link(new UnorderedStage((bytes: Uint8Array) => bytes, 2));
  const pipe = new Pipeline<Uint8Array, Uint8Array>(root, { arenaDebug: true });
  const bytes = pipe.allocSync(10_000).fill(5);
  const offset = bytes.byteOffset;
  pipe.put(bytes);
  pipe.put(null);
  const results = await within(Array.fromAsync(pipe), "the results");
  assert.equal(results.length, 2);
  for (const result of results) {
    assert.equal(result.byteOffset, offset);
    assert.equal(result[9_999], 5);
  }
  // Two references to one buffer: the first free leaves it live.
  assert.equal(pipe.stats().arena.live, 1);
  pipe.free(results[0]!);
  assert.equal(pipe.stats().arena.live, 1);
  assert.equal(results[1]![0], 5, "still there for the other branch");
  pipe.free(results[1]!);
  assert.equal(pipe.stats().arena.live, 0);
  assert.throws(() => pipe.free(results[1]!), TypeError);
  await pipe.done;
});

Deno.test("a join takes buffers from both branches; ordered, unordered and concurrent stages pass them on", async () => {
  const root = new UnorderedStage((bytes: Uint8Array) => bytes, 2);
  const join = new OrderedStage((bytes: Uint8Array) => bytes, 2);
  root.link(new OrderedStage((bytes: Uint8Array) => bytes, 3).link(join));
  root.link(
    new UnorderedStage(
      async (bytes: Uint8Array) => {
        await new Promise((resolve) => setTimeout(resolve, bytes[0]! % 3));
        return bytes;
      },
      1,
      { concurrency: 4 },
    ).link(join),
  );
  const pipe = new Pipeline<Uint8Array, Uint8Array>(root, { arenaDebug: true });
  const offsets = new Set<number>();
  const put = (async () => {
    for (let i = 0; i < 40; i++) {
      const bytes = await pipe.alloc(5000 + i);
      bytes.fill(i);
      offsets.add(bytes.byteOffset);
      await pipe.put(bytes);
    }
    await pipe.close();
  })();
  const seen = await within(
    drain(pipe, (bytes) => {
      assert.ok(offsets.has(bytes.byteOffset), "a view on the buffer put");
      assert.equal(bytes.length, 5000 + bytes[0]!);
      return bytes[0]!;
    }),
    "the results",
  );
  await put;
  assert.deepEqual(
    seen.sort((a, b) => a - b),
    Array.from({ length: 80 }, (_, i) => i >> 1),
  );
  assert.equal(pipe.stats().arena.live, 0);
  await pipe.done;
});

Deno.test("a FilterStage passes a buffer by reference to its sub-pipeline and on", async () => {
  const filter = new FilterStage<Uint8Array, number>(
    new OrderedStage((bytes: Uint8Array) => bytes.reduce((a, b) => a + b, 0)),
    { maxTasks: 100 },
  );
  const pipe = new Pipeline<Uint8Array, [Uint8Array, number[]]>(filter, {
    arenaDebug: true,
  });
  const offsets: number[] = [];
  for (let i = 0; i < 10; i++) {
    const bytes = pipe.allocSync(100).fill(1);
    offsets.push(bytes.byteOffset);
    await pipe.put(bytes);
  }
  await pipe.close();
  let i = 0;
  for await (const [bytes, sums] of pipe) {
    assert.equal(bytes.byteOffset, offsets[i++]);
    for (const sum of sums) assert.equal(sum, 100);
    pipe.free(bytes);
  }
  assert.equal(i, 10);
  await within(pipe.done, "done");
  assert.equal(pipe.stats().arena.live, 0);
});

class Expand extends OrderedWorker<number, Uint8Array> {
  doTask(n: number): Uint8Array {
    return this.alloc(n).fill(n & 0xff);
  }
}

Deno.test("a worker's alloc makes results on the arena; with no room it gives an ordinary array", async () => {
  const expand = new Stage(Expand);
  expand.link(new OrderedStage((bytes: Uint8Array) => bytes));
  const pipe = new Pipeline<number, Uint8Array>(expand, { arenaBytes: 8192 });
  pipe.put(4096);
  pipe.put(4096);
  pipe.put(4097);
  pipe.put(null);
  const results = await within(Array.fromAsync(pipe), "the results");
  // Nothing frees the first two before the third: it falls back.
  assert.deepEqual(
    results.map((bytes) => bytes.buffer instanceof SharedArrayBuffer),
    [true, true, false],
  );
  assert.equal(pipe.stats().arena.fallbacks, 1);
  for (const bytes of results.slice(0, 2)) pipe.free(bytes);
  assert.equal(pipe.stats().arena.live, 0);
  await pipe.done;
});

Deno.test("put with transfer copies a typed array into the arena once and detaches it", async () => {
  const pipe = new Pipeline<Float32Array, unknown>(
    new OrderedStage((floats: Float32Array) => [
      floats.buffer instanceof SharedArrayBuffer,
      floats.constructor.name,
      floats[2],
    ]),
  );
  const floats = new Float32Array([1, 2, 3]);
  await pipe.put(floats, { transfer: true });
  assert.equal(floats.buffer.detached, true);
  pipe.put(null);
  assert.deepEqual(await within(Array.fromAsync(pipe), "the results"), [
    [true, "Float32Array", 3],
  ]);
  assert.equal(pipe.stats().arena.live, 0);
  await pipe.done;
});

Deno.test("a stage with retry gets arena buffers as copies (it decodes each attempt afresh), and their space comes back", async () => {
  const first = new OrderedStage(
    (bytes: Uint8Array) => {
      const tries = globalThis as { tries?: number };
      tries.tries = (tries.tries ?? 0) + 1;
      // The first attempt of the first task fails; its retry sees the bytes.
      if (tries.tries === 1) throw new Error("flaky");
      return [
        bytes.buffer instanceof SharedArrayBuffer,
        bytes[0],
        bytes.length,
      ];
    },
    1,
    { retry: { attempts: 2, delayMs: 1 } },
  );
  const pipe = new Pipeline<Uint8Array, unknown[]>(first, { arenaDebug: true });
  for (let i = 0; i < 3; i++) pipe.put(pipe.allocSync(5000).fill(i));
  pipe.put(null);
  assert.deepEqual(await within(Array.fromAsync(pipe), "the results"), [
    [false, 0, 5000],
    [false, 1, 5000],
    [false, 2, 5000],
  ]);
  assert.equal(pipe.stats().arena.live, 0);
  await pipe.done;
});

Deno.test("ordinary Uint8Arrays are copied as before", async () => {
  const pipe = new Pipeline<Uint8Array, boolean>(
    new OrderedStage((bytes: Uint8Array) =>
      bytes.buffer instanceof ArrayBuffer
    ),
  );
  pipe.put(new Uint8Array(100_000));
  pipe.put(null);
  assert.deepEqual(await Array.fromAsync(pipe), [true]);
  assert.equal(pipe.stats().arena.allocations, 0);
});

// ---- space back on every path ----

Deno.test("a failed task's buffers come back (onError skip), and a failed pipeline takes no more allocations", async () => {
  const pipe = new Pipeline<Uint8Array, Uint8Array>(
    new OrderedStage(
      (bytes: Uint8Array) => {
        if (bytes[0]! % 2 === 1) throw new Error("odd");
        return bytes;
      },
      2,
      { onError: "skip" },
    ),
  );
  for (let i = 0; i < 10; i++) pipe.put(pipe.allocSync(100).fill(i));
  pipe.put(null);
  assert.deepEqual(
    await within(drain(pipe, (bytes) => bytes[0]), "the results"),
    [0, 2, 4, 6, 8],
  );
  assert.equal(pipe.stats().arena.live, 0);
  await pipe.done;

  const failing = new Pipeline<Uint8Array, Uint8Array>(
    new OrderedStage((): Uint8Array => {
      throw new Error("no");
    }),
  );
  failing.put(failing.allocSync(10));
  await assert.rejects(within(failing.done, "done"));
  await assert.rejects(failing.alloc(10), PipelineClosedError);
  assert.throws(() => failing.allocSync(10), PipelineClosedError);
});

Deno.test("terminate() ends an alloc that waits for room", async () => {
  const pipe = new Pipeline<Uint8Array, Uint8Array>(
    new OrderedStage((bytes: Uint8Array) => bytes),
    { arenaBytes: 4096 },
  );
  const held = pipe.allocSync(4096);
  assert.throws(() => pipe.allocSync(1), ArenaFullError);
  const waiting = pipe.alloc(1);
  pipe.terminate();
  await assert.rejects(within(waiting, "the alloc"), PipelineClosedError);
  assert.equal(held.length, 4096);
  await pipe.done;
});

Deno.test("a lost worker's buffers come back, and those of a task past its taskTimeout", async () => {
  for (const loss of ["exit", "timeout"] as const) {
    const pipe = new Pipeline<Uint8Array, number>(
      new OrderedStage(
        (bytes: Uint8Array) => {
          if (bytes[0] === 1) {
            if (bytes[1] === 0) Deno.exit(3);
            const end = Date.now() + 600;
            while (Date.now() < end);
          }
          return bytes.length;
        },
        1,
        loss === "exit"
          ? { restart: true, onError: "skip" }
          : { taskTimeout: 200, onError: "skip" },
      ),
    );
    for (let i = 0; i < 3; i++) {
      const bytes = pipe.allocSync(5000);
      bytes[0] = i;
      bytes[1] = loss === "exit" ? 0 : 1;
      await pipe.put(bytes);
    }
    pipe.put(null);
    assert.deepEqual(
      await within(Array.fromAsync(pipe), `the results (${loss})`),
      [5000, 5000],
    );
    await within(pipe.done, "done");
    assert.equal(pipe.stats().arena.live, 0, loss);
  }
});

class PutTwice extends OrderedWorker<Uint8Array, Uint8Array> {
  doTask(bytes: Uint8Array): Uint8Array {
    this.putResult(bytes);
    if (bytes[0] === 1) {
      // Past its taskTimeout after putting a result: the result is dropped.
      const end = Date.now() + 600;
      while (Date.now() < end);
    }
    return bytes;
  }
}

Deno.test("a timed task's putResult takes its buffer's reference when written, and none once the task timed out", async () => {
  const pipe = new Pipeline<Uint8Array, Uint8Array>(
    new Stage(PutTwice, 1, { taskTimeout: 200, onError: "skip" }),
    { arenaDebug: true },
  );
  for (let i = 0; i < 3; i++) {
    const bytes = pipe.allocSync(1000);
    bytes[0] = i;
    await pipe.put(bytes);
  }
  pipe.put(null);
  const seen = await within(drain(pipe, (bytes) => bytes[0]), "the results");
  assert.deepEqual(seen, [0, 0, 2, 2]);
  await within(pipe.done, "done");
  assert.equal(pipe.stats().arena.live, 0);
});

// ---- a full arena ----

class Grow extends OrderedWorker<Uint8Array, Uint8Array> {
  doTask(bytes: Uint8Array): Uint8Array {
    // Holds its task's buffer while it makes the next one.
    const next = this.alloc(bytes.length);
    next.set(bytes);
    next[0]!++;
    return next;
  }
}

Deno.test("a full arena with every stage holding buffers does not deadlock", async () => {
  // Room for four buffers; three stages each hold one and want another.
  const first = new Stage(Grow);
  first.link(new Stage(Grow).link(new Stage(Grow)));
  const pipe = new Pipeline<Uint8Array, Uint8Array>(first, {
    arenaBytes: 4 * 16384,
    arenaDebug: true,
  });
  const put = (async () => {
    // The first four fill the arena before the first stage allocates.
    const first = Array.from({ length: 4 }, () => pipe.allocSync(16384));
    for (let i = 0; i < 30; i++) {
      const bytes = first[i] ?? await pipe.alloc(16384);
      bytes[0] = 0;
      bytes[1] = i;
      await pipe.put(bytes);
    }
    await pipe.close();
  })();
  const seen = await within(
    drain(pipe, (bytes) => [bytes[0], bytes[1]]),
    "the run with a full arena",
    30_000,
  );
  await put;
  assert.deepEqual(seen, Array.from({ length: 30 }, (_, i) => [3, i]));
  assert.ok(pipe.stats().arena.fallbacks > 0, "a stage found the arena full");
  assert.equal(pipe.stats().arena.live, 0);
  await pipe.done;
});

// ---- debug mode ----

Deno.test("debug mode: a buffer put twice, kept past its task, or read after it was freed shows as an error", async () => {
  const pipe = new Pipeline<Uint8Array, Uint8Array>(
    new OrderedStage(
      (bytes: Uint8Array) => {
        const kept = globalThis as { kept?: Uint8Array };
        // Returning a buffer of an earlier task: it was freed when that ended.
        if (bytes[0] === 1) return kept.kept!;
        kept.kept = bytes;
        return new Uint8Array([bytes[0]!]);
      },
      1,
      { onError: "skip" },
    ),
    { arenaDebug: true },
  );
  const bytes = pipe.allocSync(100).fill(0);
  await pipe.put(bytes);
  await assert.rejects(pipe.put(bytes), TypeError);
  assert.throws(() => pipe.free(bytes), TypeError);
  const second = pipe.allocSync(100).fill(1);
  await pipe.put(second);
  pipe.put(null);
  assert.deepEqual(await within(Array.fromAsync(pipe), "the results"), [
    new Uint8Array([0]),
  ]);
  assert.equal(pipe.stats().stages[0]!.skipped, 1);
  // Their tasks ended: the space was poisoned.
  assert.ok(bytes.every((byte) => byte === Arena.POISON));
  assert.ok(second.every((byte) => byte === Arena.POISON));
  await pipe.done;
});

Deno.test("debug mode: a handle to freed space is an error, not a view on another buffer's bytes", () => {
  const memory = Arena.create(1 << 16, 0, true);
  const arena = new Arena(memory, -1);
  const encoder = new Encoder();
  encoder.arena = arena;
  const decoder = new Decoder();
  decoder.arena = arena;
  const bytes = arena.tryAlloc(10)!;
  const length = encoder.encode({ bytes });
  const record = encoder.bytes.slice(0, length);
  // The record's reference is dropped (its reader freed it), and the space
  // is another buffer's now.
  arena.drop(arena.startOf(bytes));
  const other = arena.tryAlloc(10)!;
  assert.equal(other.byteOffset, bytes.byteOffset);
  assert.throws(
    () => decoder.decode(record, new DataView(record.buffer), 0),
    /names space that was freed/,
  );
});

// ---- the allocator ----

Deno.test("the allocator reuses freed space first fit, merges free neighbours, and commits memory only when used", () => {
  const memory = Arena.create(16 * Arena.BLOCK, 2, false);
  assert.equal(memory.buffer.byteLength, Arena.HEADER_BYTES);
  const arena = new Arena(memory, -1);
  const a = arena.tryAlloc(1)!;
  const b = arena.tryAlloc(2 * Arena.BLOCK)!;
  const c = arena.tryAlloc(Arena.BLOCK)!;
  assert.equal(b.byteOffset - a.byteOffset, Arena.BLOCK);
  assert.equal(c.byteOffset - b.byteOffset, 2 * Arena.BLOCK);
  arena.release(arena.startOf(b));
  assert.equal(arena.tryAlloc(2 * Arena.BLOCK)!.byteOffset, b.byteOffset);
  arena.release(arena.startOf(a));
  arena.release(arena.startOf(new Uint8Array(b.buffer, b.byteOffset, 1)));
  // a and b merge into three free blocks.
  assert.equal(arena.tryAlloc(3 * Arena.BLOCK)!.byteOffset, a.byteOffset);
  assert.equal(arena.tryAlloc(13 * Arena.BLOCK), null);
  assert.notEqual(arena.tryAlloc(12 * Arena.BLOCK), null);
  assert.equal(arena.header[Arena.LIVE], 3);
  assert.equal(arena.tryAlloc(1), null);
});

Deno.test("alloc checks its arguments and the pipeline's arena", async () => {
  const pipe = new Pipeline(new OrderedStage((x: number) => x), {
    arenaBytes: 4096,
  });
  assert.throws(() => pipe.allocSync(4097), RangeError);
  assert.throws(() => pipe.allocSync(-1), RangeError);
  await assert.rejects(pipe.alloc(1.5), RangeError);
  pipe.free(new Uint8Array(4)); // an ordinary array: the GC's
  assert.throws(() => pipe.free({} as Uint8Array), TypeError);
  await pipe.close();
  const none = new Pipeline(new OrderedStage((x: number) => x), {
    arenaBytes: 0,
  });
  assert.throws(() => none.allocSync(1), TypeError);
  assert.throws(
    () => new Pipeline(new OrderedStage((x: number) => x), { arenaBytes: 100 }),
    RangeError,
  );
  await none.close();
});
