// Seeded stress of the pipeline's input (issues 21, 22): every mix of small,
// large, signalled, withdrawn and stop puts, with small rings and bounded
// backlogs, keeps the call order and settles each put once; a failure or
// terminate() rejects every waiting put; feed and writable end the pipeline
// as they promise. Each run is bounded: a hang fails with its seed. CI runs a
// few seeds; MPIPE_LONG=1 runs many more.

import assert from "node:assert/strict";
import {
  OrderedStage,
  Pipeline,
  PipelineClosedError,
  StageError,
  UnorderedStage,
} from "../mod.ts";
import { Prng } from "./support/prng.ts";
import { within } from "./support/bounded.ts";
import { readEnv } from "./support/env.ts";

const LONG = readEnv("MPIPE_LONG") === "1";
/** Seeds per test: a few in CI, many more with MPIPE_LONG=1. */
const SEEDS = LONG ? 300 : 12;
const BASE_SEED = Number(readEnv("MPIPE_SEED") ?? 1);

/** A task: a small number, or a string that starts with its number (medium or large). */
type Task = number | string;

function idOf(task: Task): number {
  return typeof task === "number"
    ? task
    : Number(task.slice(0, task.indexOf(":")));
}

/** A put as the harness saw it settle. */
interface PutRecord {
  id: number;
  settled: number;
  outcome: "pending" | "entered" | "rejected";
  reason?: unknown;
}

/**
 * One seeded run of a random mix of puts against one ordered stage. Returns
 * nothing; throws (with the seed in the message) on any broken property.
 */
async function putMix(seed: number): Promise<void> {
  const rng = new Prng(seed);
  const ringBytes = rng.pick([4096, 8192, 1 << 16, 1 << 20]);
  const maxBacklog = rng.pick([Infinity, 1, 2, 7, 100]);
  const workers = rng.int(1, 2);
  const n = rng.int(50, 3000);
  const readerLate = rng.chance(0.5);
  const quarter = ringBytes / 4;
  const pipe = new Pipeline<Task, Task>(
    new OrderedStage((x: Task) => x, workers, { maxBacklog }),
    { ringBytes },
  );
  const what =
    `seed ${seed} (ringBytes ${ringBytes}, maxBacklog ${maxBacklog}, workers ${workers}, n ${n}, readerLate ${readerLate})`;
  const puts: PutRecord[] = [];
  const watch = (id: number, promise: Promise<void>): PutRecord => {
    const record: PutRecord = { id, settled: 0, outcome: "pending" };
    puts.push(record);
    promise.then(
      () => {
        record.settled++;
        record.outcome = "entered";
      },
      (reason) => {
        record.settled++;
        record.outcome = "rejected";
        record.reason = reason;
      },
    );
    return record;
  };
  const reading = readerLate ? null : Array.fromAsync(pipe);
  const withdrawReason = new Error("withdrawn");
  const aborts: (() => void)[] = [];
  let stopsWithdrawn = 0;
  let shared = new AbortController();
  const produce = async () => {
    for (let id = 0; id < n; id++) {
      const kind = rng.next();
      let task: Task;
      if (kind < 0.8) task = id;
      else if (kind < 0.9) task = `${id}:` + "m".repeat(rng.int(1, 2000));
      else task = `${id}:` + "L".repeat(rng.int(quarter, quarter * 3 / 2));
      if (rng.chance(0.1)) {
        // A signal shared by many puts: its abort withdraws every one that waits.
        watch(id, pipe.put(task, { signal: shared.signal }));
        if (rng.chance(0.02)) {
          shared.abort(withdrawReason);
          shared = new AbortController();
        }
      } else if (rng.chance(0.15)) {
        const controller = new AbortController();
        watch(id, pipe.put(task, { signal: controller.signal }));
        const when = rng.next();
        if (when < 0.4) controller.abort(withdrawReason);
        else if (when < 0.7) {
          aborts.push(() => controller.abort(withdrawReason));
        } else if (when < 0.8) {
          setTimeout(() => controller.abort(withdrawReason), rng.int(0, 3));
        }
      } else watch(id, pipe.put(task));
      // Later aborts: of a put that may be waiting, writing or entered.
      if (aborts.length > 0 && rng.chance(0.2)) {
        aborts.splice(rng.int(0, aborts.length - 1), 1)[0]!();
      }
      // A stop request that its signal withdraws (if it still waits).
      if (rng.chance(0.01)) {
        const controller = new AbortController();
        const stop = pipe.put(null, { signal: controller.signal });
        controller.abort(withdrawReason);
        const outcome = await within(
          stop.then(() => "entered", () => "withdrawn"),
          `${what}: a withdrawn stop request's put`,
        );
        if (outcome === "entered") {
          // It entered before its abort: the pipeline ends here.
          return;
        }
        stopsWithdrawn++;
      }
      if (rng.chance(0.02)) {
        // Let the workers, readers and timers run.
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
      if (!readerLate && rng.chance(0.01)) {
        // An awaited put, as backpressure.
        await within(pipe.put(++id).catch(() => {}), `${what}: an awaited put`);
        watch(id, Promise.resolve());
      }
    }
    for (const abort of aborts) abort();
    if (rng.chance(0.5)) shared.abort(withdrawReason);
    pipe.put(null);
  };
  let ok = false;
  try {
    await within(produce(), `${what}: the producer`, 20_000);
    const results = await within(
      reading ?? Array.fromAsync(pipe),
      `${what}: the reader`,
      20_000,
    );
    await within(pipe.done, `${what}: done`);
    // Let the last settlements' handlers run.
    await new Promise((resolve) => setTimeout(resolve, 0));
    const expected: number[] = [];
    for (const put of puts) {
      assert.equal(
        put.settled,
        1,
        `${what}: put ${put.id} settled ${put.settled} times`,
      );
      if (put.outcome === "entered") expected.push(put.id);
      else {
        assert.equal(
          put.reason,
          withdrawReason,
          `${what}: put ${put.id} rejected with ${put.reason}`,
        );
      }
    }
    const got = results.map(idOf);
    assert.deepEqual(
      got,
      expected,
      `${what}: the results' order (${stopsWithdrawn} stops withdrawn)`,
    );
    // Large results arrived whole.
    for (const result of results) {
      if (typeof result === "string") {
        const body = result.slice(result.indexOf(":") + 1);
        assert.ok(
          /^(m*|L*)$/.test(body),
          `${what}: a string result was corrupted`,
        );
      }
    }
    ok = true;
  } finally {
    if (!ok) pipe.terminate();
  }
}

Deno.test("input stress: random mixes of small, large, signalled, withdrawn and stop puts keep call order and settle once", async () => {
  for (let s = 0; s < SEEDS; s++) await putMix(BASE_SEED + s);
});

/**
 * A failure (a task that throws) or terminate() among many waiting puts of
 * every kind: every put settles once, those that wait reject with the
 * failure (or a PipelineClosedError), the reader sees the failure, and the
 * puts nobody touches crash nothing.
 */
async function failureMix(seed: number): Promise<void> {
  const rng = new Prng(seed);
  const ringBytes = rng.pick([4096, 8192, 1 << 16, 1 << 20]);
  const maxBacklog = rng.pick([Infinity, 1, 5, 100]);
  const n = rng.int(100, 20_000);
  const failAt = rng.int(0, n - 1);
  const byTerminate = rng.chance(0.3);
  const quarter = ringBytes / 4;
  const what =
    `seed ${seed} (ringBytes ${ringBytes}, maxBacklog ${maxBacklog}, n ${n}, failAt ${failAt}, byTerminate ${byTerminate})`;
  const pipe = new Pipeline<Task, Task>(
    new UnorderedStage(
      (x: Task) => {
        if (x === -1) throw new Error("task -1 broke");
        return x;
      },
      rng.int(1, 2),
      { maxBacklog },
    ),
    { ringBytes },
  );
  const records: PutRecord[] = [];
  let untouched = 0;
  for (let id = 0; id < n; id++) {
    let task: Task = id;
    if (id === failAt && !byTerminate) task = -1;
    else if (rng.chance(0.05)) {
      task = `${id}:` + "L".repeat(rng.int(quarter, quarter * 2));
    }
    const signal = rng.chance(0.05) ? new AbortController().signal : undefined;
    const put = pipe.put(task, signal === undefined ? undefined : { signal });
    if (rng.chance(0.3)) {
      untouched++; // nobody awaits it: its rejection must crash nothing
      continue;
    }
    const record: PutRecord = { id, settled: 0, outcome: "pending" };
    records.push(record);
    put.then(
      () => {
        record.settled++;
        record.outcome = "entered";
      },
      (reason) => {
        record.settled++;
        record.outcome = "rejected";
        record.reason = reason;
      },
    );
  }
  pipe.put(null).catch(() => {});
  const reader = (async () => {
    let count = 0;
    for await (const _ of pipe) {
      if (byTerminate && ++count === failAt) pipe.terminate();
    }
    return count;
  })();
  if (byTerminate && failAt === 0) pipe.terminate();
  try {
    const read = await within(
      reader.then((count) => ({ count }), (error) => ({ error })),
      `${what}: the reader`,
      20_000,
    );
    if (byTerminate) {
      assert.ok(
        !("error" in read),
        `${what}: the reader failed after terminate(): ${
          "error" in read && read.error
        }`,
      );
    } else {
      assert.ok("error" in read, `${what}: the reader did not see the failure`);
      assert.ok(
        read.error instanceof StageError &&
          /task -1 broke/.test(read.error.message),
        `${what}: the reader saw ${read.error}`,
      );
    }
    await within(pipe.done.catch(() => {}), `${what}: done`);
    await new Promise((resolve) => setTimeout(resolve, 0));
    for (const record of records) {
      assert.equal(
        record.settled,
        1,
        `${what}: put ${record.id} settled ${record.settled} times (${untouched} untouched)`,
      );
      if (record.outcome === "rejected") {
        const ok = byTerminate
          ? record.reason instanceof PipelineClosedError
          : record.reason instanceof StageError;
        assert.ok(
          ok,
          `${what}: put ${record.id} rejected with ${record.reason}`,
        );
      }
    }
  } finally {
    pipe.terminate();
  }
}

Deno.test("input stress: a failure or terminate() among waiting puts of every kind settles each put once", async () => {
  for (let s = 0; s < SEEDS; s++) await failureMix(BASE_SEED + s);
});

// ---- feed ----

/** A source of `count` items that throws at `throwAt` or goes quiet at `quietAt` (never yields again). */
function makeSource(
  kind: "array" | "sync" | "async" | "stream",
  count: number,
  throwAt: number,
  quietAt: number,
  cancelled: { value: boolean },
): Iterable<number> | AsyncIterable<number> | ReadableStream<number> {
  const broke = new Error("source broke");
  const never = new Promise<never>(() => {});
  switch (kind) {
    case "array":
      return Array.from({ length: count }, (_, i) => i);
    case "sync":
      return (function* () {
        try {
          for (let i = 0; i < count; i++) {
            if (i === throwAt) throw broke;
            yield i;
          }
        } finally {
          cancelled.value = true;
        }
      })();
    case "async":
      return (async function* () {
        try {
          for (let i = 0; i < count; i++) {
            if (i === throwAt) throw broke;
            if (i === quietAt) await never;
            if (i % 7 === 0) await null;
            yield i;
          }
        } finally {
          cancelled.value = true;
        }
      })();
    case "stream": {
      let i = 0;
      return new ReadableStream<number>({
        pull: async (controller) => {
          if (i === throwAt) throw broke;
          if (i === quietAt) await never;
          if (i === count) return controller.close();
          controller.enqueue(i++);
        },
        cancel: () => {
          cancelled.value = true;
        },
      }, { highWaterMark: 0 });
    }
  }
}

async function feedMix(seed: number): Promise<void> {
  const rng = new Prng(seed);
  const kind = rng.pick(["array", "sync", "async", "stream"] as const);
  const count = rng.int(1, 3000);
  const ending = rng.pick(
    ["ends", "throws", "quiet-terminate", "quiet-failure", "aborted"] as const,
  );
  const at = rng.int(0, count - 1);
  const ringBytes = rng.pick([4096, 1 << 16, 1 << 20]);
  const feedSignal = new AbortController();
  const withSignal = ending === "aborted" || rng.chance(0.3);
  const abortReason = new Error("feed aborted");
  const what =
    `seed ${seed} (${kind} of ${count}, ${ending} at ${at}, ringBytes ${ringBytes}, signal ${withSignal})`;
  const effective = ending === "aborted"
    ? "aborted"
    : kind === "array"
    ? "ends"
    : kind === "sync" && ending.startsWith("quiet")
    ? "ends"
    : ending === "quiet-failure" && at === 0
    ? "quiet-terminate" // no task before the quiet step to fail
    : ending;
  const cancelled = { value: false };
  const source = makeSource(
    kind,
    count,
    effective === "throws" ? at : -1,
    effective.startsWith("quiet") ? at : -1,
    cancelled,
  );
  // A task put before the source goes quiet.
  const failAt = effective === "quiet-failure" ? rng.int(0, at - 1) : -1;
  const pipe = new Pipeline<number | string, number>(
    new OrderedStage((x: number | string) => {
      if (typeof x === "string") throw new Error("stage broke");
      return x as number;
    }),
    { ringBytes },
  );
  const fed = pipe.feed(
    // The failing task: a string where the stage expects a number.
    failAt < 0 ? source : mapSource(source, failAt),
    withSignal ? { signal: feedSignal.signal } : undefined,
  );
  const fedOutcome = fed.then(() => "resolved", (error) => error);
  const results: number[] = [];
  const reader = (async () => {
    for await (const r of pipe) {
      results.push(r);
      if (effective === "quiet-terminate" && results.length === at) {
        pipe.terminate();
      }
      if (effective === "aborted" && results.length === at) {
        feedSignal.abort(abortReason);
      }
    }
  })().then(() => "ended", (error) => error);
  if (effective === "quiet-terminate" && at === 0) {
    setTimeout(() => pipe.terminate(), 5);
  }
  if (effective === "aborted" && at === 0) feedSignal.abort(abortReason);
  try {
    const feedEnd = await within(fedOutcome, `${what}: feed`);
    // A feed stopped by its signal leaves the pipeline open.
    if (effective === "aborted" && feedEnd !== "resolved") {
      assert.equal(feedEnd, abortReason, `${what}: feed ended with ${feedEnd}`);
      await pipe.put(null);
    }
    const readEnd = await within(reader, `${what}: the reader`);
    await within(pipe.done.catch(() => {}), `${what}: done`);
    switch (effective) {
      case "aborted":
        // The tasks put before the abort, all of them, in order.
        assert.equal(
          readEnd,
          "ended",
          `${what}: the reader ended with ${readEnd}`,
        );
        assert.ok(results.length >= at, what);
        assert.deepEqual(
          results,
          Array.from({ length: results.length }, (_, i) => i),
          what,
        );
        break;
      case "ends":
        assert.equal(feedEnd, "resolved", what);
        assert.equal(readEnd, "ended", what);
        assert.deepEqual(
          results,
          Array.from({ length: count }, (_, i) => i),
          what,
        );
        break;
      case "throws":
        assert.equal((feedEnd as Error).message, "source broke", what);
        assert.equal(
          (readEnd as Error)?.message,
          "source broke",
          `${what}: the reader got ${readEnd}`,
        );
        break;
      case "quiet-terminate":
        assert.ok(
          feedEnd instanceof PipelineClosedError,
          `${what}: feed ended with ${feedEnd}`,
        );
        if (kind === "stream") {
          assert.ok(
            cancelled.value,
            `${what}: the stream source was not cancelled`,
          );
        }
        break;
      case "quiet-failure":
        assert.ok(
          feedEnd instanceof StageError,
          `${what}: feed ended with ${feedEnd}`,
        );
        assert.ok(
          readEnd instanceof StageError,
          `${what}: the reader ended with ${readEnd}`,
        );
        if (kind === "stream") {
          assert.ok(
            cancelled.value,
            `${what}: the stream source was not cancelled`,
          );
        }
        break;
    }
  } finally {
    pipe.terminate();
  }
}

/** `source` with its item `failAt` replaced by a string (a task the stage throws on). */
function mapSource(
  source: Iterable<number> | AsyncIterable<number> | ReadableStream<number>,
  failAt: number,
): ReadableStream<number | string> | AsyncIterable<number | string> {
  const map = (x: number) => x === failAt ? "bad" : x;
  if (source instanceof ReadableStream) {
    return source.pipeThrough(
      new TransformStream<number, number | string>(
        {
          transform: (x, c) => c.enqueue(map(x)),
        },
        { highWaterMark: 1 },
        { highWaterMark: 0 },
      ),
    );
  }
  return (async function* () {
    for await (const x of source as AsyncIterable<number>) yield map(x);
  })();
}

Deno.test("input stress: feed of every source kind ends, throws, or goes quiet while the pipeline ends", async () => {
  for (let s = 0; s < SEEDS * 2; s++) await feedMix(BASE_SEED + s);
});

// ---- writable ----

async function writableMix(seed: number): Promise<void> {
  const rng = new Prng(seed);
  const count = rng.int(1, 3000);
  const badAt = rng.chance(0.4) ? rng.int(0, count - 1) : -1;
  const ringBytes = rng.pick([4096, 1 << 16, 1 << 20]);
  const maxBacklog = rng.pick([Infinity, 1, 50]);
  const what =
    `seed ${seed} (${count} chunks, bad at ${badAt}, ringBytes ${ringBytes}, maxBacklog ${maxBacklog})`;
  const pauses = new Set<number>();
  for (let i = 0; i < 20; i++) pauses.add(rng.int(0, count));
  const pipe = new Pipeline<unknown, unknown>(
    new OrderedStage((x: unknown) => x, rng.int(1, 2), { maxBacklog }),
    { ringBytes },
  );
  let i = 0;
  const source = new ReadableStream<unknown>({
    pull: async (controller) => {
      if (pauses.has(i)) await new Promise((resolve) => setTimeout(resolve, 1));
      if (i === count) return controller.close();
      // A function cannot be cloned: it ends the pipeline.
      controller.enqueue(i === badAt ? () => i : i);
      i++;
    },
  });
  const slowReader = rng.chance(0.5);
  const piped = source.pipeTo(pipe.writable).then(() => "ok", (error) => error);
  const results: unknown[] = [];
  const reader = (async () => {
    for await (const r of pipe) {
      results.push(r);
      if (slowReader && results.length % 500 === 0) {
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    }
  })().then(() => "ended", (error) => error);
  try {
    const pipeEnd = await within(piped, `${what}: pipeTo`);
    const readEnd = await within(reader, `${what}: the reader`);
    await within(pipe.done.catch(() => {}), `${what}: done`);
    if (badAt < 0) {
      assert.equal(pipeEnd, "ok", `${what}: pipeTo ended with ${pipeEnd}`);
      assert.equal(
        readEnd,
        "ended",
        `${what}: the reader ended with ${readEnd}`,
      );
      assert.deepEqual(
        results,
        Array.from({ length: count }, (_, i) => i),
        what,
      );
    } else {
      assert.ok(
        pipeEnd instanceof Error && pipeEnd.name === "DataCloneError",
        `${what}: pipeTo ended with ${pipeEnd}`,
      );
      assert.ok(
        readEnd instanceof Error && readEnd.name === "DataCloneError",
        `${what}: the reader ended with ${readEnd}`,
      );
      // What arrived is a prefix, in order, of what came before the bad chunk.
      results.forEach((r, k) => assert.equal(r, k < badAt ? k : k + 1, what));
    }
  } finally {
    pipe.terminate();
  }
}

Deno.test("input stress: pipeTo(pipe.writable) keeps order and backpressure, and an un-clonable chunk ends the pipeline", async () => {
  for (let s = 0; s < SEEDS * 2; s++) await writableMix(BASE_SEED + s);
});

// ---- puts that wait together settle together ----

/**
 * Puts into `pipe` (no reader, small rings) until a second put waits (the
 * first waits alone), and returns that put, awaited at once if `awaitIt`,
 * and the next task number.
 */
async function secondWaitingPut(
  pipe: Pipeline<number, number>,
  awaitIt: boolean,
): Promise<[Promise<void>, number]> {
  const { ENTERED } = await import("../lib/main_thread/task_input.ts");
  let waiting = 0;
  let i = 0;
  for (;;) {
    const put = pipe.put(i++);
    if (put !== ENTERED && waiting++ === 1) {
      return [awaitIt ? put.then(() => {}) : put, i];
    }
  }
}

Deno.test("Pipeline.put: a waiting put that is awaited settles once its task entered, whatever is put after the await", async () => {
  const pipe = new Pipeline<number, number>(
    new OrderedStage((x: number) => x),
    { ringBytes: 4096 },
  );
  try {
    const [awaited, next] = await secondWaitingPut(pipe, true);
    // Puts made after the await wait in a group of their own.
    for (let k = 0; k < 300; k++) pipe.put(next + k);
    await within(awaited, "the awaited put of a task that entered", 5_000);
  } finally {
    pipe.terminate();
  }
});

Deno.test({
  name:
    "input: a waiting put whose task entered settles without waiting for the puts made after it (fails today: it waits for its whole group, so awaiting it before reading hangs)",
  // The one hazard of shared settlements (see Pipeline.put): run with MPIPE_REPRO=1.
  ignore: readEnv("MPIPE_REPRO") !== "1",
  fn: async () => {
    const pipe = new Pipeline<number, number>(
      new OrderedStage((x: number) => x),
      { ringBytes: 4096 },
    );
    try {
      const [first, next] = await secondWaitingPut(pipe, false);
      // On its own, the put enters once the worker takes what is ahead of it.
      // Puts made after it must not hold it back: the program reads only
      // once it has entered.
      for (let k = 0; k < 300; k++) pipe.put(next + k);
      await within(first, "the put of a task that entered", 5_000);
    } finally {
      pipe.terminate();
    }
  },
});
