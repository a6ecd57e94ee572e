// The `cluster` stage option without a cluster: a fake `Cluster` whose
// stand-in (tests/fixtures/stand_in.ts) runs each task in the stand-in
// worker after a delay. Checks what the pipeline does with remote stages:
// one stand-in worker with concurrency = size, the run closed before `done`
// settles, a remote failure made a StageError naming the host; and the
// engine's handling of many tasks in flight that settle together.

import assert from "node:assert/strict";
import {
  type Cluster,
  type ClusterRun,
  OrderedStage,
  Pipeline,
  type RemoteStage,
  StageError,
  UnorderedStage,
} from "../mod.ts";
import type { StandInConfig } from "./fixtures/stand_in.ts";

const STAND_IN = new URL("./fixtures/stand_in.ts", import.meta.url).href;

/** A fake cluster: records what the pipeline asks of it. */
class FakeCluster implements Cluster {
  readonly opened: RemoteStage[][] = [];
  closes = 0;
  closed = false;
  readonly #settings: Omit<StandInConfig, "source">;
  readonly #closeMs: number;

  constructor(
    settings: Partial<Omit<StandInConfig, "source">> = {},
    closeMs = 0,
  ) {
    this.#settings = { delayMs: 1, failing: [], bulk: false, ...settings };
    this.#closeMs = closeMs;
  }

  openRun(stages: readonly RemoteStage[]): ClusterRun {
    this.opened.push([...stages]);
    return {
      standIn: (index) => ({
        module: STAND_IN,
        args: [
          {
            ...this.#settings,
            source: (stages[index]!.target as { source: string }).source,
          } satisfies StandInConfig,
        ],
      }),
      close: async () => {
        this.closes++;
        await new Promise((resolve) => setTimeout(resolve, this.#closeMs));
        this.closed = true;
      },
    };
  }
}

// ---------------------------------------------------------------- the stand-in

Deno.test("Stage option cluster: a remote stage runs one stand-in worker with concurrency = its size, in order", async () => {
  const cluster = new FakeCluster({ delayMs: 5 });
  const stage = new OrderedStage((x: number) => x * 2, 8, {
    cluster,
    name: "remote",
  });
  const pipe = new Pipeline<number, [number, number]>(stage);
  for (let i = 0; i < 100; i++) pipe.put(i);
  pipe.put(null);
  const results = await Array.fromAsync(pipe);
  assert.deepEqual(
    results.map(([value]) => value),
    Array.from({ length: 100 }, (_, i) => i * 2),
  );
  const most = Math.max(...results.map(([, inFlight]) => inFlight));
  assert.equal(most, 8, "at most size tasks in flight, and that many");
  assert.equal(cluster.opened.length, 1);
  assert.deepEqual(
    cluster.opened[0]!.map(({ name, size, concurrency }) => ({
      name,
      size,
      concurrency,
    })),
    [{ name: "remote", size: 8, concurrency: 1 }],
  );
  assert.equal(cluster.opened[0]![0]!.target.kind, "source");
  await pipe.done;
});

Deno.test("Stage option cluster: stages of one cluster share a run; local stages around them are untouched", async () => {
  const cluster = new FakeCluster();
  // The fake stand-in returns [result, tasks in flight].
  const first = new OrderedStage((x: number) => x + 1, 3);
  const a = new OrderedStage<number, [number, number]>(
    ((x: number) => x * 10) as never,
    4,
    { cluster, name: "a" },
  );
  const middle = new OrderedStage(
    (pair: [number, number]) => pair[0],
    2,
  );
  const b = new UnorderedStage<number, [number, number]>(
    ((x: number) => -x) as never,
    4,
    { cluster, name: "b" },
  );
  first.link(a.link(middle.link(b)));
  const pipe = new Pipeline<number, [number, number]>(first);
  for (let i = 0; i < 20; i++) pipe.put(i);
  pipe.put(null);
  const results = (await Array.fromAsync(pipe)).map(([value]) => value);
  assert.deepEqual(
    results.sort((x, y) => x - y),
    Array.from({ length: 20 }, (_, i) => -(20 - i) * 10),
  );
  assert.deepEqual(cluster.opened.map((run) => run.map((s) => s.name)), [[
    "a",
    "b",
  ]]);
});

Deno.test("Stage option cluster: the run is closed once, and done settles after it, after the stop or terminate()", async () => {
  const cluster = new FakeCluster({}, 100);
  const pipe = new Pipeline<number, [number, number]>(
    new OrderedStage((x: number) => x, 2, { cluster }),
  );
  pipe.put(1);
  pipe.put(null);
  assert.equal((await Array.fromAsync(pipe)).length, 1);
  assert.equal(cluster.closed, false, "not closed before done");
  await pipe.done;
  assert.equal(cluster.closed, true);
  assert.equal(cluster.closes, 1);

  const other = new FakeCluster({ delayMs: 1000 }, 50);
  const terminated = new Pipeline<number, [number, number]>(
    new OrderedStage((x: number) => x, 2, { cluster: other }),
  );
  terminated.put(1);
  terminated.terminate();
  terminated.terminate();
  await terminated.done;
  assert.equal(other.closed, true);
  assert.equal(other.closes, 1);
});

Deno.test("Stage option cluster: a stand-in's remote failure is a StageError naming the host and its worker", async () => {
  const cluster = new FakeCluster({ failing: [2] });
  const pipe = new Pipeline<number, [number, number]>(
    new OrderedStage((x: number) => x, 4, { cluster, name: "far" }),
  );
  for (let i = 0; i < 5; i++) pipe.put(i).catch(() => {});
  pipe.put(null).catch(() => {});
  await assert.rejects(Array.fromAsync(pipe), (error: unknown) => {
    assert.ok(error instanceof StageError);
    assert.equal(error.stage, "far");
    assert.equal(error.host, "fake-host");
    assert.equal(error.worker, 3);
    assert.equal(error.task, 2);
    assert.ok(error.cause instanceof RangeError);
    assert.equal(
      error.message,
      "stage 'far', host 'fake-host', worker 3, task 2: task 2 failed: task 2 fails",
    );
    return true;
  });
  await pipe.done.catch(() => {});
});

Deno.test("Stage option cluster: under onError the remote failure is skipped and reported with its host", async () => {
  const errors: StageError[] = [];
  const stage = new OrderedStage((x: number) => x, 4, {
    cluster: new FakeCluster({ failing: [1, 3] }),
    onError: (error) => errors.push(error),
  });
  const pipe = new Pipeline<number, [number, number]>(stage);
  for (let i = 0; i < 5; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual((await Array.fromAsync(pipe)).map(([v]) => v), [0, 2, 4]);
  assert.equal(stage.skipped, 2);
  assert.deepEqual(errors.map((e) => [e.host, e.task]), [
    ["fake-host", 1],
    ["fake-host", 3],
  ]);
});

Deno.test("Stage option cluster: with retry, a task its stand-in rejects is tried again, `when` sees the error thrown remotely, and the order holds", async () => {
  // The stand-in's doTask calls 1 and 2 reject (a RangeError on "fake-host").
  const cluster = new FakeCluster({ delayMs: 2, failing: [1, 2] });
  const stage = new OrderedStage((x: number) => x * 2, 2, {
    cluster,
    retry: {
      attempts: 3,
      delayMs: 1,
      jitter: 0,
      when: (error) => error instanceof RangeError,
    },
  });
  const pipe = new Pipeline<number, [number, number]>(stage);
  for (let i = 0; i < 10; i++) pipe.put(i);
  pipe.put(null);
  assert.deepEqual(
    (await Array.fromAsync(pipe)).map(([value]) => value),
    Array.from({ length: 10 }, (_, i) => i * 2),
  );
  await pipe.done;
  assert.equal(pipe.stats().stages[0]!.retries, 2);
  assert.equal(stage.skipped, 0);
});

Deno.test("Stage option cluster: is checked, and refuses doStopTask and restart", () => {
  const f = (x: number) => x;
  assert.throws(
    () => new OrderedStage(f, 1, { cluster: {} as Cluster }),
    /'options.cluster' must be a cluster/,
  );
  const cluster = new FakeCluster();
  assert.throws(
    () => new OrderedStage(f, 1, { cluster, doStopTask: true }),
    /'options.doStopTask' cannot be used with 'options.cluster'/,
  );
  assert.throws(
    () => new OrderedStage(f, 1, { cluster, restart: true }),
    /'options.restart' cannot be used with 'options.cluster'/,
  );
  // null means local.
  assert.equal(new OrderedStage(f, 2, { cluster: null }).size, 2);
});

// ---------------------------------------------------------------- many in flight

for (const ordered of [true, false]) {
  Deno.test(
    `concurrency: ${
      ordered ? "an ordered" : "an unordered"
    } stage with thousands of tasks in flight that settle together keeps up`,
    async () => {
      // Every task a turn starts settles in one later turn, as a remote
      // stage's answers do; an unordered stage once looked at every task in
      // flight for each that settled.
      const Kind = ordered ? OrderedStage : UnorderedStage;
      const stage = new Kind((x: number) => x, 4096, {
        cluster: new FakeCluster({ bulk: true, delayMs: 0 }),
      });
      const pipe = new Pipeline<number, [number, number]>(stage);
      const N = 100_000;
      const started = performance.now();
      (async () => {
        for (let i = 0; i < N; i++) await pipe.put(i);
        await pipe.put(null);
      })();
      const results: number[] = [];
      for await (const [value] of pipe) results.push(value);
      const seconds = (performance.now() - started) / 1000;
      if (!ordered) results.sort((a, b) => a - b);
      assert.deepEqual(results, Array.from({ length: N }, (_, i) => i));
      // A hang guard on a shared box, not a speed check: 25k tasks/s.
      assert.ok(seconds < 4, `${N} tasks took ${seconds.toFixed(1)} s`);
    },
  );
}
