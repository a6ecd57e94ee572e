// The `retry` option of a remote stage, against a real nats-server and real
// worker hosts (see tests/support/nats.ts): a task that fails on a host is
// sent again, after its delay, to any host of the stage. The hosts run one
// worker each, so that a task's attempts meet the same worker, which counts
// them in a global of its own (a task's source may use only globals; the
// stages of one test share that worker, so each gets tasks of its own).

import assert from "node:assert/strict";
import { OrderedStage, Pipeline, StageError, UnorderedStage } from "../mod.ts";
import { JetStreamCluster } from "../jetstream.ts";
import {
  clusterOptions,
  natsUrl,
  runKillingOneHost,
  stopSharedServer,
  timed,
  trustedHost,
  withHosts,
} from "./support/nats.ts";
import { until } from "./support/bounded.ts";

const URL_ = await natsUrl();

/** A host that runs one task at a time, in one worker. */
const ONE_WORKER = trustedHost(1);

timed(
  "JetStream retry: an ordered remote stage sends again the tasks that failed once, and keeps their order",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["retry-1"], async () => {
      // Attempt 1 of every seventh task throws; each result says how many
      // times this host's worker ran its task.
      const flaky = (x: number): [number, number] => {
        const g = globalThis as unknown as { runs?: Map<number, number> };
        const runs = g.runs ??= new Map();
        const n = (runs.get(x) ?? 0) + 1;
        runs.set(x, n);
        if (x % 7 === 3 && n === 1) throw new Error(`task ${x} flakes`);
        return [x * 2, n];
      };
      const stage = new OrderedStage(flaky, 4, {
        cluster,
        name: "flaky",
        retry: { attempts: 3, delayMs: 50, jitter: 0 },
      });
      const pipe = new Pipeline<number, [number, number]>(stage);
      const N = 35;
      for (let i = 0; i < N; i++) pipe.put(i);
      pipe.put(null);
      const results = await Array.fromAsync(pipe);
      assert.deepEqual(
        results,
        Array.from(
          { length: N },
          (_, x) => [x * 2, x % 7 === 3 ? 2 : 1],
        ),
        "every result once, in task order; each flaky task ran twice, the others once",
      );
      await pipe.done;
      const stats = pipe.stats().stages[0]!;
      assert.equal(stats.retries, 5, "tasks 3, 10, 17, 24 and 31 retried once");
      assert.equal(stats.skipped, 0);
      assert.deepEqual(
        stats.retried.map(({ task, attempts }) => [task, attempts]).sort((
          a,
          b,
        ) => a[0]! - b[0]!),
        [[3, 2], [10, 2], [17, 2], [24, 2], [31, 2]],
      );
    }, ONE_WORKER);
  },
);

timed(
  "JetStream retry: a task waiting for its retry holds back an ordered stage's later results, not an unordered one's",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["retry-order-1"], async () => {
      // Attempt 1 of the first task (0, or 100) throws; its retry waits 2 s.
      const firstFails = (x: number) => {
        const g = globalThis as unknown as { tried?: Set<number> };
        const tried = g.tried ??= new Set();
        const first = !tried.has(x);
        tried.add(x);
        if (x % 100 === 0 && first) throw new Error(`task ${x} flakes`);
        return x;
      };
      const N = 10;
      for (
        const [Kind, base] of [[OrderedStage, 0], [
          UnorderedStage,
          100,
        ]] as const
      ) {
        const pipe = new Pipeline<number, number>(
          new Kind(firstFails, 4, {
            cluster,
            retry: { attempts: 2, delayMs: 2_000, jitter: 0 },
          }),
        );
        const tasks = Array.from({ length: N }, (_, i) => base + i);
        for (const task of tasks) pipe.put(task);
        pipe.put(null);
        const results = await Array.fromAsync(pipe);
        await pipe.done;
        if (Kind === OrderedStage) assert.deepEqual(results, tasks);
        else {
          // The others came while the first waited (2 s is far more than
          // they take), so it came last.
          assert.equal(results.at(-1), base, `results: ${results}`);
          assert.deepEqual(results.toSorted((a, b) => a - b), tasks);
        }
        assert.equal(pipe.stats().stages[0]!.retries, 1);
      }
    }, ONE_WORKER);
  },
);

timed(
  "JetStream retry: `when` picks the errors retried, with the error as thrown on the host and the attempt's number",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["retry-when-1"], async () => {
      // Attempt 1 of an even task throws a TypeError, of an odd one a
      // RangeError; only TypeErrors are retried.
      const picky = (x: number) => {
        const g = globalThis as unknown as { tried?: Set<number> };
        const tried = g.tried ??= new Set();
        const first = !tried.has(x);
        tried.add(x);
        if (first && x % 2 === 0) throw new TypeError(`${x}: try again`);
        if (first) throw new RangeError(`${x}: give up`);
        return x;
      };
      const errors: StageError[] = [];
      const stage = new OrderedStage(picky, 3, {
        cluster,
        retry: {
          attempts: 4,
          delayMs: 10,
          jitter: 0,
          when: (error, attempt) => error instanceof TypeError && attempt === 1,
        },
        onError: (error) => errors.push(error),
      });
      const pipe = new Pipeline<number, number>(stage);
      for (let i = 0; i < 8; i++) pipe.put(i);
      pipe.put(null);
      assert.deepEqual(await Array.fromAsync(pipe), [0, 2, 4, 6]);
      await pipe.done;
      assert.deepEqual(errors.map((error) => error.task), [1, 3, 5, 7]);
      for (const error of errors) {
        assert.equal(error.host, "retry-when-1");
        assert.ok(error.cause instanceof RangeError);
        assert.deepEqual(error.attempts, [error.cause]);
        assert.doesNotMatch(error.message, /attempts/);
      }
      assert.equal(stage.skipped, 4);
      assert.equal(pipe.stats().stages[0]!.retries, 4);
    }, ONE_WORKER);
  },
);

timed(
  "JetStream retry: after the last attempt, onError decides: a StageError with each attempt's error fails the run, or the task is skipped",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["retry-last-1"], async () => {
      // Task 2 (and 12) fails every attempt, each with its attempt's number.
      const never = (x: number) => {
        const g = globalThis as unknown as { runs?: Map<number, number> };
        const runs = g.runs ??= new Map();
        const n = (runs.get(x) ?? 0) + 1;
        runs.set(x, n);
        if (x % 10 === 2) throw new Error(`attempt ${n} of task ${x}`);
        return x;
      };
      const retry = { attempts: 3, delayMs: 10, jitter: 0 };
      const failing = new Pipeline<number, number>(
        new OrderedStage(never, 4, { cluster, name: "never", retry }),
      );
      for (let i = 0; i < 6; i++) failing.put(i).catch(() => {});
      failing.put(null).catch(() => {});
      await assert.rejects(Array.fromAsync(failing), (error: unknown) => {
        assert.ok(error instanceof StageError);
        assert.equal(error.stage, "never");
        assert.equal(error.host, "retry-last-1");
        assert.equal(error.task, 2);
        assert.deepEqual(
          error.attempts.map((e) => (e as Error).message),
          ["attempt 1 of task 2", "attempt 2 of task 2", "attempt 3 of task 2"],
        );
        assert.equal(error.cause, error.attempts[2]);
        assert.match(
          error.message,
          /^stage 'never', host 'retry-last-1', worker \d+, task 2: task 2 failed after 3 attempts: attempt 3 of task 2$/,
        );
        return true;
      });
      await failing.done.catch(() => {});

      const errors: StageError[] = [];
      const stage = new OrderedStage(never, 4, {
        cluster,
        name: "skipping",
        retry,
        onError: (error) => errors.push(error),
      });
      const skipping = new Pipeline<number, number>(stage);
      for (let i = 10; i < 16; i++) skipping.put(i);
      skipping.put(null);
      assert.deepEqual(await Array.fromAsync(skipping), [10, 11, 13, 14, 15]);
      await skipping.done;
      assert.equal(errors.length, 1);
      assert.equal(errors[0]!.task, 2);
      assert.deepEqual(
        errors[0]!.attempts.map((e) => (e as Error).message),
        [
          "attempt 1 of task 12",
          "attempt 2 of task 12",
          "attempt 3 of task 12",
        ],
      );
      assert.equal(stage.skipped, 1);
      const stats = skipping.stats().stages[0]!;
      assert.equal(stats.retries, 2);
      assert.deepEqual(
        stats.retried.map(({ task, attempts }) => [task, attempts]),
        [[2, 3]],
      );
    }, ONE_WORKER);
  },
);

timed(
  "JetStream retry: a task over its taskTimeout is sent again, counted once, and the late answer of its first attempt is dropped",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["retry-timeout-1"], async () => {
      // Task 1 hangs if it starts before `slowUntil`: its first attempt
      // overruns the taskTimeout (3 s), its retry (2 s later) does not; the
      // 3 s leave the host time to replace its worker (the timeout counts
      // from the send to the answer).
      const slowFirst = async (
        { x, slowUntil }: { x: number; slowUntil: number },
      ) => {
        if (x === 1 && Date.now() < slowUntil) {
          await new Promise((resolve) => setTimeout(resolve, 20_000));
        }
        return x;
      };
      const pipe = new Pipeline<{ x: number; slowUntil: number }, number>(
        new OrderedStage(slowFirst, 2, {
          cluster,
          taskTimeout: 3_000,
          retry: { attempts: 3, delayMs: 2_000, jitter: 0 },
        }),
      );
      const slowUntil = Date.now() + 4_000;
      for (let x = 0; x < 3; x++) pipe.put({ x, slowUntil });
      pipe.put(null);
      assert.deepEqual(await Array.fromAsync(pipe), [0, 1, 2]);
      await pipe.done;
      const stats = pipe.stats().stages[0]!;
      // Both this machine and the host time the first attempt out: one
      // failure all the same, one retry.
      assert.equal(stats.retries, 1, JSON.stringify(stats.retried));
      assert.deepEqual(
        stats.retried.map(({ task, attempts }) => [task, attempts]),
        [[1, 2]],
      );
    }, ONE_WORKER);
  },
);

timed(
  "JetStream retry: terminate() during a long retry delay ends the run at once",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["retry-stop-1"], async () => {
      const pipe = new Pipeline<number, number>(
        new OrderedStage(
          (x: number) => {
            if (x === 1) throw new Error("never");
            return x;
          },
          2,
          { cluster, retry: { attempts: 2, delayMs: 600_000, jitter: 0 } },
        ),
      );
      await pipe.feed([0, 1, 2]);
      assert.equal(await pipe.get(), 0);
      await until(
        "task 1's retry",
        () => pipe.stats().stages[0]!.retries === 1,
      );
      pipe.terminate();
      // The test's own guard (90 s) bounds this: a hang fails it.
      await pipe.done.then(() => {}, () => {});
    }, ONE_WORKER);
  },
);

timed(
  "JetStream retry: a host SIGKILLed while tasks wait for their retries loses nothing, and nothing comes twice",
  120_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    // Every tenth task fails the first time each host worker meets it (so
    // up to 4 times on 2 hosts of 2 workers): its retries go to any host.
    await runKillingOneHost(
      URL_,
      cluster,
      ["retry-kill-1", "retry-kill-2"],
      async (x) => {
        await new Promise((resolve) => setTimeout(resolve, 3));
        const g = globalThis as unknown as { seen?: Set<number> };
        const seen = g.seen ??= new Set();
        if (x % 10 === 3 && !seen.has(x)) {
          seen.add(x);
          throw new Error(`task ${x} flakes here`);
        }
        return [x * 3, Deno.pid];
      },
      { retry: { attempts: 6, delayMs: 20 } },
    );
  },
);

Deno.test({
  name: "JetStream retry: (the end) the test server stops",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await stopSharedServer();
  },
});
