// Attacks on a remote stage's `retry` (red team, issue 26), against a real
// nats-server and real worker hosts (see tests/support/nats.ts): many tasks
// with some failing, several hosts of several workers, large records, a
// `when` that throws, and a task that kills its host's worker.

import assert from "node:assert/strict";
import {
  OrderedStage,
  Pipeline,
  type StageError,
  UnorderedStage,
} from "../mod.ts";
import { JetStreamCluster } from "../jetstream.ts";
import {
  clusterOptions,
  natsUrl,
  stopSharedServer,
  timed,
  trustedHost,
  withHosts,
} from "./support/nats.ts";

const URL_ = await natsUrl();

/** A host of `n` workers. */
const workers = trustedHost;

for (const Kind of [OrderedStage, UnorderedStage]) {
  timed(
    `JetStream retry attack: 3,000 tasks on 2 hosts of 2 workers (concurrency 2), a tenth failing the first time each worker meets them: each result once${
      Kind === OrderedStage ? ", in order" : ""
    }, and the retries add up`,
    180_000,
    async () => {
      await using cluster = await JetStreamCluster.connect(
        clusterOptions(URL_, { maxBatch: 8 }),
      );
      await withHosts(URL_, ["many-1", "many-2"], async () => {
        const flaky = async (x: number) => {
          const g = globalThis as unknown as { seen?: Set<number> };
          const seen = g.seen ??= new Set();
          if (x % 3 === 0) await new Promise((r) => setTimeout(r, 1));
          if (x % 10 === 7 && !seen.has(x)) {
            seen.add(x);
            throw new Error(`task ${x} flakes`);
          }
          return x;
        };
        const stage = new Kind(flaky, 24, {
          cluster,
          concurrency: 2,
          retry: { attempts: 8, delayMs: 5, maxDelayMs: 20 },
        });
        const pipe = new Pipeline<number, number>(stage);
        const N = 3_000;
        (async () => {
          for (let i = 0; i < N; i++) await pipe.put(i);
          await pipe.put(null);
        })();
        const results = await Array.fromAsync(pipe);
        await pipe.done;
        const all = Array.from({ length: N }, (_, i) => i);
        if (Kind === OrderedStage) assert.deepEqual(results, all);
        else assert.deepEqual(results.toSorted((a, b) => a - b), all);
        const stats = pipe.stats().stages[0]!;
        assert.equal(stats.skipped, 0);
        assert.equal(stats.received, N);
        // Each flaky task fails once in each worker that meets it (4 in
        // all), and no other fails; `retried` lists the five with the most.
        assert.ok(
          stats.retries >= N / 10 && stats.retries <= (4 * N) / 10,
          `retries: ${stats.retries}`,
        );
        assert.ok(stats.retried.length > 0 && stats.retried.length <= 5);
        for (const { task, attempts } of stats.retried) {
          assert.equal(task % 10, 7, `task ${task} was retried`);
          assert.ok(attempts >= 2 && attempts <= 5, `${task}: ${attempts}`);
        }
      }, workers(2));
    },
  );
}

timed(
  "JetStream retry attack: large records (each alone in a message, fragmented in the rings) that fail once come back whole",
  120_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["large-1"], async () => {
      const bigFlaky = (s: string) => {
        const g = globalThis as unknown as { seen?: Set<string> };
        const seen = g.seen ??= new Set();
        const key = s.slice(0, 8);
        if (!seen.has(key)) {
          seen.add(key);
          throw new Error(`${key} flakes`);
        }
        return s.length + ":" + s.slice(0, 8) + s.slice(-8);
      };
      const pipe = new Pipeline<string, string>(
        new OrderedStage(bigFlaky, 4, {
          cluster,
          retry: { attempts: 2, delayMs: 10, jitter: 0 },
        }),
        { ringBytes: 1 << 16 },
      );
      const N = 6;
      const inputs = Array.from(
        { length: N },
        (_, i) =>
          `${String(i).padStart(8, "0")}${
            String.fromCharCode(97 + i).repeat(400_000)
          }${String(i).padStart(8, "x")}`,
      );
      (async () => {
        for (const s of inputs) await pipe.put(s);
        await pipe.put(null);
      })();
      const results = await Array.fromAsync(pipe);
      await pipe.done;
      assert.deepEqual(
        results,
        inputs.map((s) => s.length + ":" + s.slice(0, 8) + s.slice(-8)),
      );
      assert.equal(pipe.stats().stages[0]!.retries, N);
    }, workers(1));
  },
);

timed(
  "JetStream retry attack: tasks whose buffers are on the arena (put with transfer) fail once and come back whole, the arena emptied",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["arena-1"], async () => {
      const sum = (bytes: Uint8Array) => {
        const g = globalThis as unknown as { seen?: Set<number> };
        const seen = g.seen ??= new Set();
        if (!seen.has(bytes[0]!)) {
          seen.add(bytes[0]!);
          throw new Error(`${bytes[0]} flakes`);
        }
        let total = 0;
        for (const byte of bytes) total += byte;
        return total;
      };
      const pipe = new Pipeline<Uint8Array, number>(
        new OrderedStage(sum, 4, {
          cluster,
          retry: { attempts: 2, delayMs: 10, jitter: 0 },
        }),
      );
      const N = 20;
      const expected: number[] = [];
      for (let i = 0; i < N; i++) {
        const bytes = new Uint8Array(100_000).fill(1);
        bytes[0] = i;
        expected.push(100_000 - 1 + i);
        await pipe.put(bytes, { transfer: true });
      }
      await pipe.put(null);
      assert.deepEqual(await Array.fromAsync(pipe), expected);
      await pipe.done;
      assert.equal(pipe.stats().stages[0]!.retries, N);
      const { arena } = pipe.stats();
      assert.equal(arena.allocations, N);
      assert.equal(arena.live, 0);
      assert.equal(arena.usedBytes, 0);
    }, workers(1));
  },
);

timed(
  "JetStream retry attack: a `when` that throws ends the retries with what it threw, naming the host",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["when-throws-1"], async () => {
      const errors: StageError[] = [];
      const stage = new OrderedStage(
        (x: number) => {
          if (x === 2) throw new Error("task 2 fails");
          return x;
        },
        2,
        {
          cluster,
          retry: {
            attempts: 5,
            delayMs: 5,
            when: (_error, attempt) => {
              if (attempt === 2) throw new SyntaxError("when gives up");
              return true;
            },
          },
          onError: (error) => errors.push(error),
        },
      );
      const pipe = new Pipeline<number, number>(stage);
      await pipe.feed([0, 1, 2, 3]);
      assert.deepEqual(await Array.fromAsync(pipe), [0, 1, 3]);
      await pipe.done;
      assert.equal(errors.length, 1);
      const [error] = errors;
      assert.equal(error!.task, 2);
      assert.equal(error!.host, "when-throws-1");
      assert.ok(error!.cause instanceof SyntaxError, String(error!.cause));
      assert.equal(error!.attempts.length, 2);
      assert.equal((error!.attempts[0] as Error).message, "task 2 fails");
      assert.equal(error!.attempts[1], error!.cause);
      assert.equal(pipe.stats().stages[0]!.retries, 1);
    }, workers(1));
  },
);

timed(
  "JetStream retry attack: a task that kills its host's worker (Deno.exit) is quarantined at its crashBudget, whatever its retry's attempts, and counted",
  120_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["exit-1"], async () => {
      const errors: StageError[] = [];
      const stage = new OrderedStage(
        (x: number) => {
          if (x === 1) Deno.exit(3);
          return x;
        },
        2,
        {
          cluster,
          name: "exits",
          crashBudget: 2,
          retry: { attempts: 6, delayMs: 5 },
          onError: (error) => errors.push(error),
        },
      );
      const pipe = new Pipeline<number, number>(stage);
      await pipe.feed([0, 1, 2, 3]);
      assert.deepEqual(await Array.fromAsync(pipe), [0, 2, 3]);
      await pipe.done;
      assert.equal(errors.length, 1);
      const [error] = errors;
      assert.equal(error!.task, 1);
      assert.equal(
        error!.attempts.length,
        2,
        `the task cost ${error!.attempts.length} host workers: ${
          error!.message
        }`,
      );
      assert.match(error!.message, /quarantined/);
      const stats = pipe.stats().stages[0]!;
      assert.equal(stats.quarantined, 1);
      assert.equal(stats.retries, 1);
    }, workers(1));
  },
);

timed(
  "JetStream retry attack: an unordered stage on 2 hosts of 2 workers, one SIGKILLed mid-run while retries are sent and wait: each result once",
  120_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(
      clusterOptions(URL_, { maxBatch: 4 }),
    );
    await withHosts(URL_, ["ukill-1", "ukill-2"], async ([victim]) => {
      const flaky = async (x: number) => {
        await new Promise((resolve) => setTimeout(resolve, 2));
        const g = globalThis as unknown as { seen?: Set<number> };
        const seen = g.seen ??= new Set();
        if (x % 7 === 0 && !seen.has(x)) {
          seen.add(x);
          throw new Error(`task ${x} flakes here`);
        }
        return x;
      };
      const pipe = new Pipeline<number, number>(
        new UnorderedStage(flaky, 16, {
          cluster,
          concurrency: 2,
          retry: { attempts: 8, delayMs: 30, maxDelayMs: 60 },
        }),
      );
      const N = 1_000;
      (async () => {
        for (let i = 0; i < N; i++) await pipe.put(i);
        await pipe.put(null);
      })();
      const results: number[] = [];
      for await (const x of pipe) {
        results.push(x);
        if (results.length === 200) victim!.kill("SIGKILL");
      }
      await pipe.done;
      assert.deepEqual(
        results.toSorted((a, b) => a - b),
        Array.from({ length: N }, (_, i) => i),
      );
      const stats = pipe.stats().stages[0]!;
      assert.equal(stats.skipped, 0);
      assert.ok(stats.retries >= Math.ceil(N / 7), `retries ${stats.retries}`);
      assert.equal((await victim!.status).signal, "SIGKILL");
    }, workers(2));
  },
);

// taskTimeout counts from the send (README): a slow task's batch-mates, and
// their retries queued behind it on the host's one worker, time out too, so
// some tasks may run out of attempts; what matters here is that the late
// answers of their earlier sends never give a result twice.
timed(
  "JetStream retry attack: batches whose slow task overruns the stand-in's taskTimeout are sent again task by task, and the late answers of the batches are dropped: each task's result once, in order, or the task skipped",
  120_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(
      clusterOptions(URL_, { maxBatch: 8 }),
    );
    await withHosts(URL_, ["late-1"], async () => {
      const slow = async (x: number) => {
        const g = globalThis as unknown as { seen?: Set<number> };
        const seen = g.seen ??= new Set();
        if (x % 10 === 5 && !seen.has(x)) {
          seen.add(x);
          await new Promise((resolve) => setTimeout(resolve, 2_500));
        }
        return x;
      };
      const stage = new OrderedStage(slow, 8, {
        cluster,
        taskTimeout: 1_000,
        retry: { attempts: 4, delayMs: 10 },
        onError: "skip",
      });
      const pipe = new Pipeline<number, number>(stage);
      const N = 40;
      await pipe.feed(Array.from({ length: N }, (_, i) => i));
      const results = await Array.fromAsync(pipe);
      await pipe.done;
      for (let i = 1; i < results.length; i++) {
        assert.ok(results[i]! > results[i - 1]!, `results: ${results}`);
      }
      const stats = pipe.stats().stages[0]!;
      assert.equal(results.length + stage.skipped, N, `results: ${results}`);
      assert.equal(stats.received, N);
    }, workers(1));
  },
);

Deno.test({
  name: "JetStream retry attack: (the end) the test server stops",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await stopSharedServer();
  },
});
