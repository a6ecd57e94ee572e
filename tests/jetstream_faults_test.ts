// Faults of the cluster under remote stages, against a real nats-server and
// real worker hosts (issue 24, F1 to F5): each test is the fault itself, and
// its outcome is every result exactly once or a StageError, never a hang.
// Every test is bounded in time and stops the processes it starts.

import assert from "node:assert/strict";
import { OrderedStage, Pipeline, StageError } from "../mod.ts";
import { JetStreamCluster } from "../jetstream.ts";
import {
  AckPolicy,
  connect,
  jetstream,
  jetstreamManager,
} from "../lib/jetstream/connection.ts";
import { ensureStagesStream, stageNames } from "../lib/jetstream/streams.ts";
import { Encoder } from "../lib/jetstream/messages.ts";
import {
  clusterOptions,
  HostProcess,
  NatsServer,
  natsUrl,
  runKillingOneHost,
  stopSharedServer,
  TEST_KEYS,
  timed,
  withHosts,
} from "./support/nats.ts";

const URL_ = await natsUrl();

/** The server's max_payload. */
async function maxPayload(url: string): Promise<number> {
  const nc = await connect({ servers: url });
  try {
    return nc.info!.max_payload;
  } finally {
    await nc.close();
  }
}

/** The length of a LEB128 integer. */
function varintLength(n: number): number {
  let length = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    length++;
  }
  return length;
}

/** The length `n` of a Uint8Array whose framed record, after `head` bytes, makes a message of `total` bytes. */
function sizedFor(head: number, total: number): number {
  const encoder = new Encoder();
  for (let n = total - head - 16; n > 0; n--) {
    const encoded = encoder.encode(new Uint8Array(n));
    if (head + varintLength(encoded) + encoded === total) return n;
  }
  throw new Error(`no length fits ${total}`);
}

// ---------------------------------------------------------------- F1

timed(
  "JetStream fault F1: a task and a result that fit max_payload only without their headers fail with a RangeError, not a hang",
  60_000,
  async () => {
    const max = await maxPayload(URL_);
    // Messages a few bytes under max_payload, as the layout before tokens
    // framed them: a batch's 16 bytes, an answer's 20 and host name.
    const task = new Uint8Array(sizedFor(16, max - 8));
    const result = sizedFor(4 + 4 + 8 + 4 + 1 + "edge-1".length + 1, max - 8);
    await using cluster = await JetStreamCluster.connect(
      clusterOptions(URL_, { maxBatch: 1 }),
    );
    await withHosts(URL_, ["edge-1"], async () => {
      const errors: StageError[] = [];
      const pipe = new Pipeline<Uint8Array | number, number | Uint8Array>(
        new OrderedStage(
          (t: Uint8Array | number) =>
            typeof t === "number" ? new Uint8Array(t) : t.length,
          4,
          { cluster, onError: (error) => errors.push(error) },
        ),
      );
      pipe.put(task);
      pipe.put(5);
      pipe.put(result);
      pipe.put(null);
      const results = await Array.fromAsync(pipe);
      assert.equal(results.length, 1);
      assert.deepEqual(results[0], new Uint8Array(5));
      assert.deepEqual(errors.map((e) => e.task), [0, 2]);
      for (const error of errors) {
        assert.ok(error.cause instanceof RangeError, String(error));
        assert.match(error.message, /max_payload/);
      }
    });
  },
);

// ---------------------------------------------------------------- F2

timed(
  "JetStream fault F2: the run's stream deleted mid-run fails the pipeline with a StageError, not a hang",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["lost-1"], async () => {
      const pipe = new Pipeline<number, number>(
        new OrderedStage(
          async (x: number) => {
            await new Promise((resolve) => setTimeout(resolve, 10));
            return x;
          },
          8,
          { cluster, name: "doomed", onError: () => {} },
        ),
      );
      (async () => {
        for (let i = 0; i < 1_000; i++) await pipe.put(i);
        await pipe.put(null);
      })().catch(() => {});
      let seen = 0;
      await assert.rejects(
        (async () => {
          for await (const _ of pipe) {
            if (++seen === 20) {
              const nc = await connect({ servers: URL_ });
              const jsm = await jetstreamManager(nc);
              for await (const name of jsm.streams.names()) {
                if (name !== "MPIPE_STAGES") await jsm.streams.delete(name);
              }
              await nc.close();
            }
          }
        })(),
        (error: unknown) => {
          assert.ok(error instanceof StageError, String(error));
          assert.equal(error.stage, "doomed");
          assert.match(error.message, /stream MPIPE_\w+ is gone/);
          return true;
        },
      );
      await pipe.done.catch(() => {});
    });
  },
);

timed(
  "JetStream fault F2: the server restarted on an empty store fails the run with a StageError; the hosts serve the next run",
  120_000,
  async () => {
    await using server = await NatsServer.start();
    await using cluster = await JetStreamCluster.connect(
      clusterOptions(server.url),
    );
    await withHosts(server.url, ["empty-1"], async () => {
      const pipe = new Pipeline<number, number>(
        new OrderedStage(
          async (x: number) => {
            await new Promise((resolve) => setTimeout(resolve, 10));
            return x;
          },
          8,
          { cluster, name: "amnesia" },
        ),
      );
      (async () => {
        for (let i = 0; i < 1_000; i++) await pipe.put(i);
        await pipe.put(null);
      })().catch(() => {});
      let seen = 0;
      await assert.rejects(
        (async () => {
          for await (const _ of pipe) {
            if (++seen === 20) {
              await server.stop();
              await Deno.remove(server.storeDir, { recursive: true });
              await server.restart();
            }
          }
        })(),
        (error: unknown) => {
          assert.ok(error instanceof StageError, String(error));
          assert.equal(error.stage, "amnesia");
          assert.match(error.message, /is gone/);
          return true;
        },
      );
      await pipe.done.catch(() => {});
      // The next run finds hosts that watch the new store.
      const next = new Pipeline<number, number>(
        new OrderedStage((x: number) => x * 2, 8, { cluster }),
      );
      for (let i = 0; i < 10; i++) next.put(i);
      next.put(null);
      assert.deepEqual(
        await Array.fromAsync(next),
        Array.from({ length: 10 }, (_, i) => i * 2),
      );
    });
  },
);

// ---------------------------------------------------------------- F3

timed(
  "JetStream fault F3: a task stuck on a host (a busy loop, a promise that never settles) times out there; the host's later tasks and the next run go on",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    const host = await HostProcess.start(URL_, "stuck-1", [
      "--trust",
      TEST_KEYS.publicKey,
      "--allow-source",
      "--workers",
      "2",
    ]);
    try {
      const errors: StageError[] = [];
      const pipe = new Pipeline<number, number>(
        new OrderedStage(
          (x: number) => {
            if (x === 3) { for (;;) { /* stuck for good */ } }
            if (x === 6) return new Promise<number>(() => {});
            return x;
          },
          2,
          {
            cluster,
            taskTimeout: 2_000,
            onError: (error) => errors.push(error),
          },
        ),
      );
      for (let i = 0; i < 12; i++) pipe.put(i);
      pipe.put(null);
      assert.deepEqual(
        await Array.fromAsync(pipe),
        [0, 1, 2, 4, 5, 7, 8, 9, 10, 11],
      );
      assert.deepEqual(errors.map((e) => e.task), [3, 6]);
      for (const error of errors) {
        assert.equal((error.cause as Error).name, "TimeoutError");
      }
      // The host's workers are free for the next run.
      const next = new Pipeline<number, number>(
        new OrderedStage((x: number) => x + 1, 4, { cluster }),
      );
      for (let i = 0; i < 10; i++) next.put(i);
      next.put(null);
      assert.deepEqual(
        await Array.fromAsync(next),
        Array.from({ length: 10 }, (_, i) => i + 1),
      );
    } finally {
      await host.stop(2_000);
    }
  },
);

// ---------------------------------------------------------------- F4

timed(
  "JetStream fault F4: a stage whose every host is killed fails with a StageError (no host) after hostTimeout, not a wait for ever; a task longer than hostTimeout on a live host is no such fault",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(
      clusterOptions(URL_, { hostTimeout: 3_000 }),
    );
    const host = await HostProcess.start(URL_, "nohost-1");
    try {
      const pipe = new Pipeline<number, number>(
        new OrderedStage(
          async (x: number) => {
            // Longer than hostTimeout: the host says it is alive meanwhile.
            await new Promise((resolve) =>
              setTimeout(resolve, x < 2 ? 4_000 : 50)
            );
            return x;
          },
          4,
          { cluster, name: "orphaned" },
        ),
      );
      (async () => {
        for (let i = 0; i < 1_000; i++) await pipe.put(i);
        await pipe.put(null);
      })().catch(() => {});
      let seen = 0;
      await assert.rejects(
        (async () => {
          for await (const _ of pipe) {
            if (++seen === 10) host.kill("SIGKILL");
          }
        })(),
        (error: unknown) => {
          assert.ok(error instanceof StageError, String(error));
          assert.equal(error.stage, "orphaned");
          assert.match(error.message, /no host has served the stage for \d+ s/);
          return true;
        },
      );
      assert.ok(seen >= 10, `only ${seen} results before the failure`);
      await pipe.done.catch(() => {});
    } finally {
      await host.stop(2_000);
    }
  },
);

timed(
  "JetStream fault F4: hostTimeout is checked: a number of at least 1000 or Infinity",
  10_000,
  async () => {
    for (const hostTimeout of [0, 999, -1, 1.5e3 + 0.5, NaN]) {
      await assert.rejects(
        JetStreamCluster.connect(clusterOptions(URL_, { hostTimeout })),
        (error: unknown) =>
          error instanceof RangeError &&
          /'options\.hostTimeout'/.test(error.message),
      );
    }
    await (await JetStreamCluster.connect(
      clusterOptions(URL_, { hostTimeout: Infinity }),
    )).close();
  },
);

// ---------------------------------------------------------------- F6

timed(
  "JetStream fault F6: a host SIGKILLed mid-run with a long ackWait loses its tasks to the other host at once: the ordered run completes, every result once and in order, before ackWait has passed",
  120_000,
  async () => {
    const ackWait = 30_000;
    await using cluster = await JetStreamCluster.connect(
      clusterOptions(URL_, { ackWait, maxBatch: 2 }),
    );
    const after = await runKillingOneHost(
      URL_,
      cluster,
      ["f6-1", "f6-2"],
      async (x) => {
        await new Promise((resolve) => setTimeout(resolve, 5));
        return [x * 3, Deno.pid];
      },
    );
    // The victim's tasks waited for no ackWait (before, the run ended
    // ackWait after the kill at the earliest).
    assert.ok(
      after < ackWait,
      `the run ended ${
        Math.round(after)
      } ms after the kill, ackWait is ${ackWait} ms`,
    );
  },
);

// ---------------------------------------------------------------- F5

timed(
  "JetStream fault F5: a dead coordinator's run stream and consumers (its announcement expired) are removed by the hosts; a stream whose stage is announced stays",
  120_000,
  async () => {
    const nc = await connect({ servers: URL_ });
    const jsm = await jetstreamManager(nc);
    await ensureStagesStream(jsm);
    // What a coordinator SIGKILLed more than ANNOUNCE_TTL_MS ago leaves: its
    // run's stream and both consumers, and no announcement (expired).
    const dead = stageNames("deadc0ffee000001", 0);
    const live = stageNames("11fec0ffee000002", 0);
    try {
      for (const names of [dead, live]) {
        await jsm.streams.add({
          name: names.stream,
          subjects: [names.inSubject, names.outSubject],
        });
        for (const durable_name of ["hosts", "bridge"]) {
          await jsm.consumers.add(names.stream, {
            durable_name,
            ack_policy: AckPolicy.Explicit,
            filter_subject: durable_name === "hosts"
              ? names.inSubject
              : names.outSubject,
          });
        }
      }
      await withHosts(URL_, ["sweep-1"], async () => {
        const exists = (stream: string) =>
          jsm.streams.info(stream).then(() => true, () => false);
        // The live stage is announced, as its coordinator would, every 5 s.
        const js = jetstream(nc);
        const announce = () =>
          js.publish(live.announcement, new Uint8Array([0])).catch(() => {});
        await announce();
        const announcer = setInterval(announce, 5_000);
        try {
          for (let i = 0; i < 200 && await exists(dead.stream); i++) {
            await new Promise((resolve) => setTimeout(resolve, 500));
          }
          assert.equal(
            await exists(dead.stream),
            false,
            "the dead run's stream is still there after 100 s",
          );
          assert.equal(await exists(live.stream), true);
        } finally {
          clearInterval(announcer);
        }
      });
    } finally {
      for (const names of [dead, live]) {
        await jsm.streams.delete(names.stream).catch(() => {});
        await jsm.streams.purge("MPIPE_STAGES", {
          filter: names.announcement,
        }).catch(() => {});
      }
      await nc.close();
    }
  },
);

Deno.test({
  name: "JetStream faults: (the end) the test server stops",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: stopSharedServer,
});
