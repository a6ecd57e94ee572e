// Remote stages on NATS JetStream, against a real nats-server (see
// tests/support/nats.ts: `.ci/run` starts one, else the first test does) and
// real worker hosts (`host.ts` as processes). Every test is bounded in time
// and stops the processes it starts.

import assert from "node:assert/strict";
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  Stage,
  StageError,
  UnorderedStage,
} from "../mod.ts";
import { JetStreamCluster } from "../jetstream.ts";
import { connect, jetstreamManager } from "../lib/jetstream/connection.ts";
import {
  clusterOptions,
  type HostGrants,
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

/** The streams of runs (not the announcements) on the server at `url`. */
async function runStreams(url: string): Promise<string[]> {
  const nc = await connect({ servers: url });
  try {
    const jsm = await jetstreamManager(nc);
    const names: string[] = [];
    for await (const name of jsm.streams.names()) {
      if (name !== "MPIPE_STAGES") names.push(name);
    }
    return names;
  } finally {
    await nc.close();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------- the cookbook

timed(
  "JetStream: the cookbook runs with its second stage remote",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["cook-1"], async () => {
      function increment(task: number) {
        return task + 1;
      }
      class Doubler extends OrderedWorker<number, number> {
        doTask(task: number) {
          this.putResult(task * 2);
        }
      }
      const stage1 = new OrderedStage(increment, 3);
      const stage2 = new Stage(Doubler, 4, { cluster });
      const stage3 = new UnorderedStage<number, number>(
        new URL("../examples/work.ts", import.meta.url),
        2,
      );
      stage1.link(stage2.link(stage3));
      const pipe = new Pipeline<number, number>(stage1);
      for (let i = 0; i < 10; i++) pipe.put(i);
      pipe.put(null);
      const results = await Array.fromAsync(pipe);
      assert.deepEqual(
        results.sort((a, b) => a - b),
        [1, 3, 5, 7, 9, 11, 13, 15, 17, 19],
      );
      await pipe.done;
    });
  },
);

timed(
  "JetStream: a remote class gets its args, and its several results per task keep their order",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["many-1"], async () => {
      class Repeat extends OrderedWorker<number, string> {
        constructor(readonly times: number, readonly tag: string) {
          super();
        }
        doTask(task: number) {
          for (let i = 0; i < this.times - 1; i++) {
            this.putResult(`${this.tag}${task}.${i}`);
          }
          return task % 2 === 0 ? `${this.tag}${task}.last` : undefined;
        }
      }
      const pipe = new Pipeline<number, string>(
        new Stage(Repeat, 8, { cluster, args: [3, "t"] }),
      );
      for (let i = 0; i < 4; i++) pipe.put(i);
      pipe.put(null);
      assert.deepEqual(await Array.fromAsync(pipe), [
        "t0.0",
        "t0.1",
        "t0.last",
        "t1.0",
        "t1.1",
        "t2.0",
        "t2.1",
        "t2.last",
        "t3.0",
        "t3.1",
      ]);
    });
  },
);

// ---------------------------------------------------------------- ordering

timed(
  "JetStream: an ordered remote stage emits in task order, an unordered one as results come, with uneven task times",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_, {
      maxBatch: 1,
    }));
    await withHosts(URL_, ["order-1", "order-2"], async () => {
      // Task 0 is slow, the others fast and uneven.
      const uneven = async (x: number) => {
        await new Promise((resolve) =>
          setTimeout(resolve, x === 0 ? 400 : (x * 7) % 13)
        );
        return x;
      };
      const N = 40;
      const ordered = new Pipeline<number, number>(
        new OrderedStage(uneven, 16, { cluster }),
      );
      for (let i = 0; i < N; i++) ordered.put(i);
      ordered.put(null);
      assert.deepEqual(
        await Array.fromAsync(ordered),
        Array.from({ length: N }, (_, i) => i),
      );

      const unordered = new Pipeline<number, number>(
        new UnorderedStage(uneven, 16, { cluster }),
      );
      for (let i = 0; i < N; i++) unordered.put(i);
      unordered.put(null);
      const results = await Array.fromAsync(unordered);
      assert.deepEqual(
        [...results].sort((a, b) => a - b),
        Array.from({ length: N }, (_, i) => i),
      );
      // The slow first task did not hold back the others.
      assert.notEqual(results[0], 0);
      assert.ok(results.indexOf(0) > N / 2, `0 came at ${results.indexOf(0)}`);
    });
  },
);

timed(
  "JetStream: a fork where one branch is remote gives each branch every result",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["fork-1"], async () => {
      const root = new OrderedStage((x: number) => x + 1, 2);
      const remote = new OrderedStage((x: number) => x * 10, 32, { cluster });
      const local = new OrderedStage((x: number) => -x, 2);
      root.link(remote).link(local);
      const pipe = new Pipeline<number, number>(root);
      const N = 500;
      (async () => {
        for (let i = 0; i < N; i++) await pipe.put(i);
        await pipe.put(null);
      })();
      const [fromRemote, fromLocal] = await Promise.all([
        Array.fromAsync(remote.results()),
        Array.fromAsync(local.results()),
      ]);
      assert.deepEqual(
        fromRemote,
        Array.from({ length: N }, (_, i) => (i + 1) * 10),
      );
      assert.deepEqual(
        fromLocal,
        Array.from({ length: N }, (_, i) => -(i + 1)),
      );
      await pipe.done;
    });
  },
);

// ---------------------------------------------------------------- hosts lost and found

timed(
  "JetStream: a host killed with SIGKILL mid-run loses nothing: every result exactly once, in order",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_, {
      ackWait: 1_000,
    }));
    await runKillingOneHost(URL_, cluster, ["kill-1", "kill-2"], async (x) => {
      await new Promise((resolve) => setTimeout(resolve, 3));
      return [x * 3, Deno.pid];
    });
  },
);

timed("JetStream: a host joining mid-run takes its share", 90_000, async () => {
  await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
  await withHosts(URL_, ["join-1"], async () => {
    const pipe = new Pipeline<number, [number, number]>(
      new OrderedStage(
        async (x: number) => {
          await new Promise((resolve) => setTimeout(resolve, 10));
          return [x, Deno.pid] as [number, number];
        },
        8,
        { cluster },
      ),
    );
    const N = 400;
    (async () => {
      for (let i = 0; i < N; i++) await pipe.put(i);
      await pipe.put(null);
    })();
    const results: number[] = [];
    const pids = new Set<number>();
    let late: HostProcess | undefined;
    try {
      for await (const [value, pid] of pipe) {
        results.push(value);
        pids.add(pid);
        if (results.length === 20) {
          late = await HostProcess.start(URL_, "join-2");
        }
      }
      assert.deepEqual(results, Array.from({ length: N }, (_, i) => i));
      assert.ok(
        late !== undefined && pids.has(late.pid),
        "the late host did some of the work",
      );
    } finally {
      await late?.stop();
    }
  });
});

timed(
  "JetStream: with no host a stage waits, a get() times out, and nothing is lost when a host comes",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    const pipe = new Pipeline<number, number>(
      new OrderedStage((x: number) => x * x, 4, { cluster }),
    );
    for (let i = 0; i < 10; i++) pipe.put(i);
    pipe.put(null);
    await assert.rejects(
      pipe.get({ timeout: 500 }),
      (error: unknown) =>
        error instanceof DOMException && error.name === "TimeoutError",
    );
    await withHosts(URL_, ["late-1"], async () => {
      assert.deepEqual(
        await Array.fromAsync(pipe),
        Array.from({ length: 10 }, (_, i) => i * i),
      );
    });
    await pipe.done;
  },
);

timed(
  "JetStream: the server restarted mid-run loses nothing: clients reconnect and the run completes",
  120_000,
  async () => {
    await using server = await NatsServer.start();
    await using cluster = await JetStreamCluster.connect(
      clusterOptions(server.url, {
        ackWait: 2_000,
      }),
    );
    await withHosts(server.url, ["restart-1", "restart-2"], async () => {
      const pipe = new Pipeline<number, number>(
        new OrderedStage(
          async (x: number) => {
            await new Promise((resolve) => setTimeout(resolve, 2));
            return x + 1000;
          },
          64,
          { cluster },
        ),
      );
      const N = 2000;
      (async () => {
        for (let i = 0; i < N; i++) await pipe.put(i);
        await pipe.put(null);
      })();
      const results: number[] = [];
      for await (const value of pipe) {
        results.push(value);
        if (results.length === 300) {
          await server.stop();
          await sleep(500);
          await server.restart();
        }
      }
      assert.deepEqual(results, Array.from({ length: N }, (_, i) => i + 1000));
    });
  },
);

// ---------------------------------------------------------------- errors

timed(
  "JetStream: a task that throws on a host fails the pipeline with a StageError naming the stage, host, worker, task and cause",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["throw-1"], async () => {
      const pipe = new Pipeline<number, number>(
        new OrderedStage(
          (x: number) => {
            if (x === 5) throw new TypeError("five is not allowed");
            return x;
          },
          4,
          { cluster, name: "picky" },
        ),
      );
      for (let i = 0; i < 10; i++) pipe.put(i).catch(() => {});
      pipe.put(null).catch(() => {});
      await assert.rejects(Array.fromAsync(pipe), (error: unknown) => {
        assert.ok(error instanceof StageError);
        assert.equal(error.stage, "picky");
        assert.equal(error.host, "throw-1");
        assert.equal(typeof error.worker, "number");
        assert.equal(error.task, 5);
        assert.ok(error.cause instanceof TypeError);
        assert.equal((error.cause as Error).message, "five is not allowed");
        assert.match(
          error.message,
          /^stage 'picky', host 'throw-1', worker \d+, task 5: task 5 failed: five is not allowed$/,
        );
        return true;
      });
    });
  },
);

timed(
  "JetStream: under onError a task that throws on a host is skipped, and the others complete in order",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["skip-1"], async () => {
      const errors: StageError[] = [];
      const stage = new OrderedStage(
        (x: number) => {
          if (x % 10 === 3) throw new Error(`no ${x}`);
          return x;
        },
        8,
        { cluster, onError: (error) => errors.push(error) },
      );
      const pipe = new Pipeline<number, number>(stage);
      for (let i = 0; i < 40; i++) pipe.put(i);
      pipe.put(null);
      const results = await Array.fromAsync(pipe);
      assert.deepEqual(
        results,
        Array.from({ length: 40 }, (_, i) => i).filter((i) => i % 10 !== 3),
      );
      assert.equal(stage.skipped, 4);
      assert.deepEqual(errors.map((e) => e.task), [3, 13, 23, 33]);
      assert.ok(errors.every((e) => e.host === "skip-1"));
    });
  },
);

timed(
  "JetStream: a task whose host worker is lost (Deno.exit) fails alone, with the loss",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["exit-1"], async () => {
      const errors: StageError[] = [];
      const stage = new OrderedStage(
        (x: number) => {
          if (x === 7) Deno.exit(7);
          return x;
        },
        64,
        { cluster, onError: (error) => errors.push(error) },
      );
      const pipe = new Pipeline<number, number>(stage);
      for (let i = 0; i < 20; i++) pipe.put(i);
      pipe.put(null);
      const results = await Array.fromAsync(pipe);
      assert.deepEqual(
        results,
        Array.from({ length: 20 }, (_, i) => i).filter((i) => i !== 7),
      );
      assert.equal(errors.length, 1);
      assert.equal(errors[0]!.task, 7);
      assert.match(
        errors[0]!.message,
        /its worker was lost: it called Deno\.exit\(7\)/,
      );
    });
  },
);

// The budget of 2 hosts is the cluster's maxAttempts, or the stage's own
// crashBudget (one crash budget, issue 26), which wins over the cluster's;
// the stage's `retry` does not send a quarantined task again.
for (
  const [maxBatch, budget] of [[1, "maxAttempts"], [4, "crashBudget"]] as const
) {
  timed(
    `JetStream: a poison task that kills every host it reaches ends as an error after its ${budget} of host deaths in all (maxBatch ${maxBatch}${
      budget === "crashBudget" ? ", retry" : ""
    }); the other tasks complete`,
    120_000,
    async () => {
      await using cluster = await JetStreamCluster.connect(
        clusterOptions(URL_, {
          ackWait: 1_000,
          maxAttempts: budget === "maxAttempts" ? 2 : 3,
          maxBatch,
        }),
      );
      // Two hosts at all times: each one the poison kills is replaced.
      const hosts: HostProcess[] = [];
      const started: HostProcess[] = [];
      let spawned = 0;
      let keeping = true;
      const keep = async () => {
        while (keeping) {
          for (let i = 0; i < 2; i++) {
            if (hosts[i] === undefined || hosts[i]!.exited) {
              hosts[i] = await HostProcess.start(
                URL_,
                `poison-${spawned++}`,
                undefined,
                // The poison kills its host with Deno.kill.
                { run: true },
              );
              started.push(hosts[i]!);
            }
          }
          await sleep(100);
        }
      };
      const keeper = keep();
      try {
        const errors: StageError[] = [];
        const stage = new OrderedStage(
          (x: number) => {
            if (x === 3) Deno.kill(Deno.pid, "SIGKILL");
            return x * 2;
          },
          16,
          {
            cluster,
            onError: (error) => errors.push(error),
            name: "poisoned",
            ...(budget === "crashBudget"
              ? { crashBudget: 2, retry: { attempts: 4, delayMs: 10 } }
              : {}),
          },
        );
        const pipe = new Pipeline<number, number>(stage);
        for (let i = 0; i < 30; i++) pipe.put(i);
        pipe.put(null);
        const results = await Array.fromAsync(pipe);
        assert.deepEqual(
          results,
          Array.from({ length: 30 }, (_, i) => i * 2).filter((x) => x !== 6),
        );
        assert.equal(errors.length, 1);
        assert.equal(errors[0]!.task, 3);
        assert.match(
          errors[0]!.message,
          /quarantined: it lost its host 2 times .* crashBudget of 2/,
        );
        assert.equal(errors[0]!.attempts.length, 1);
        assert.equal(pipe.stats().stages[0]!.retries, 0);
        assert.equal(pipe.stats().stages[0]!.quarantined, 1);
        keeping = false;
        await keeper;
        const killed = started.filter((host) => host.exited);
        for (const host of killed) {
          assert.equal((await host.status).signal, "SIGKILL");
        }
        // maxAttempts counts every host the poison killed.
        assert.equal(
          killed.length,
          2,
          `the poison killed ${killed.length} hosts`,
        );
      } finally {
        keeping = false;
        await keeper;
        await Promise.all(hosts.map((host) => host.stop()));
      }
    },
  );
}

timed(
  "JetStream: large tasks and results travel (split in the rings and across messages); one over the server's max_payload fails with a RangeError",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_, {
      maxBatch: 8,
    }));
    await withHosts(URL_, ["large-1"], async () => {
      const errors: StageError[] = [];
      // Tasks of 300 KB and 600 KB are split into fragments in the rings; a
      // batch of them is split into messages under max_payload (1 MiB), and
      // so is an answer of three 400 KB results.
      const echo = new OrderedStage(
        (task: Uint8Array | number) => {
          if (typeof task === "number") return new Uint8Array(task).fill(7);
          return task.length + task[task.length - 1]!;
        },
        8,
        { cluster, onError: (error) => errors.push(error) },
      );
      const pipe = new Pipeline<Uint8Array | number, number | Uint8Array>(echo);
      pipe.put(new Uint8Array(300_000).fill(1));
      pipe.put(new Uint8Array(600_000).fill(2));
      pipe.put(new Uint8Array(2_000_000).fill(3));
      pipe.put(400_000);
      pipe.put(400_000);
      pipe.put(400_000);
      pipe.put(new Uint8Array(10).fill(4));
      pipe.put(2_000_000);
      pipe.put(null);
      const results = await Array.fromAsync(pipe);
      assert.deepEqual(results.slice(0, 2), [300_001, 600_002]);
      for (const result of results.slice(2, 5)) {
        assert.ok(result instanceof Uint8Array && result.length === 400_000);
        assert.equal(result[399_999], 7);
      }
      assert.deepEqual(results.slice(5), [14]);
      assert.deepEqual(errors.map((e) => e.task), [2, 7]);
      assert.ok(errors.every((e) => e.cause instanceof RangeError));
      assert.match(errors[0]!.message, /max_payload/);
      assert.match(errors[1]!.message, /max_payload/);
    });
  },
);

timed(
  "JetStream: a result that cannot be cloned fails its task with a DataCloneError, as in a local stage",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["clone-1"], async () => {
      const errors: StageError[] = [];
      const pipe = new Pipeline<number, unknown>(
        new OrderedStage((x: number) => x === 1 ? (() => x) : x, 4, {
          cluster,
          onError: (error) => errors.push(error),
        }),
      );
      for (let i = 0; i < 3; i++) pipe.put(i);
      pipe.put(null);
      assert.deepEqual(await Array.fromAsync(pipe), [0, 2]);
      assert.equal(errors.length, 1);
      assert.equal(errors[0]!.task, 1);
      assert.equal((errors[0]!.cause as Error).name, "DataCloneError");
    });
  },
);

// ---------------------------------------------------------------- security

timed(
  "JetStream: a host refuses a source target without --allow-source, and the refusal fails the pipeline with a StageError",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["strict-1"], async () => {
      const pipe = new Pipeline<number, number>(
        new OrderedStage((x: number) => x, 4, { cluster, name: "sourced" }),
      );
      pipe.put(1).catch(() => {});
      pipe.put(null).catch(() => {});
      await assert.rejects(pipe.get(), (error: unknown) => {
        assert.ok(error instanceof StageError);
        assert.equal(error.stage, "sourced");
        assert.equal(error.host, "strict-1");
        assert.match(
          error.message,
          /the host refused the stage: .*--allow-source/,
        );
        return true;
      });
    }, ["--workers", "1"]);
  },
);

timed(
  "JetStream: a host imports only module targets under its --allow-target prefixes",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    const square = new URL("./fixtures/square.ts", import.meta.url);
    const fixtures = new URL("./fixtures/", import.meta.url).href;
    await withHosts(URL_, ["prefix-1"], async () => {
      const allowed = new Pipeline<number, number>(
        new OrderedStage<number, number>(square, 4, { cluster }),
      );
      for (let i = 0; i < 5; i++) allowed.put(i);
      allowed.put(null);
      assert.deepEqual(await Array.fromAsync(allowed), [0, 1, 4, 9, 16]);
    }, ["--allow-target", fixtures]);
    await withHosts(URL_, ["prefix-2"], async () => {
      const refused = new Pipeline<number, number>(
        new OrderedStage<number, number>(square, 4, { cluster }),
      );
      refused.put(1).catch(() => {});
      refused.put(null).catch(() => {});
      await assert.rejects(refused.get(), (error: unknown) => {
        assert.ok(error instanceof StageError);
        assert.equal(error.host, "prefix-2");
        assert.match(
          error.message,
          /is not under any URL prefix this host may import \(https:\/\/example\.com\/\)/,
        );
        return true;
      });
    }, ["--allow-target", "https://example.com/"]);
  },
);

timed(
  "JetStream: a server with TLS and user accounts: the cluster and the hosts connect with a private CA and a password; a wrong password is refused",
  90_000,
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "mpipe-tls-" });
    try {
      await makeCertificates(dir);
      await using server = await NatsServer.start([
        "--tls",
        "--tlscert",
        `${dir}/server.pem`,
        "--tlskey",
        `${dir}/server.key`,
        "--user",
        "mpipe",
        "--pass",
        "s3cret",
      ]);
      await assert.rejects(
        JetStreamCluster.connect({
          servers: server.url,
          user: "mpipe",
          pass: "wrong",
          tls: { caFile: `${dir}/ca.pem` },
        }),
        /Authorization|authorization|auth/,
      );
      await using cluster = await JetStreamCluster.connect({
        servers: server.url,
        user: "mpipe",
        pass: "s3cret",
        tls: { caFile: `${dir}/ca.pem` },
        signingKey: TEST_KEYS.signingKey,
      });
      await withHosts(server.url, ["tls-1"], async () => {
        const pipe = new Pipeline<number, number>(
          new OrderedStage((x: number) => x * 3, 8, { cluster }),
        );
        for (let i = 0; i < 20; i++) pipe.put(i);
        pipe.put(null);
        assert.deepEqual(
          await Array.fromAsync(pipe),
          Array.from({ length: 20 }, (_, i) => i * 3),
        );
      }, [
        "--trust",
        TEST_KEYS.publicKey,
        "--allow-source",
        "--workers",
        "1",
        "--user",
        "mpipe",
        "--pass",
        "s3cret",
        "--tls-ca",
        `${dir}/ca.pem`,
      ], { read: [dir] });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/** A CA, and a certificate for 127.0.0.1 signed by it, made with openssl. */
async function makeCertificates(dir: string): Promise<void> {
  const openssl = async (...args: string[]) => {
    const { code, stderr } = await new Deno.Command("openssl", {
      args,
      cwd: dir,
      stdout: "null",
      stderr: "piped",
    }).output().catch((error) => {
      throw new Error(
        `openssl is needed for the TLS test (.ci/run installs it): ${error}`,
      );
    });
    if (code !== 0) {
      throw new Error(
        `openssl ${args[0]} failed: ${new TextDecoder().decode(stderr)}`,
      );
    }
  };
  const key = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
  ];
  await openssl(
    "req",
    "-x509",
    ...key,
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "1",
    "-subj",
    "/CN=mpipe test CA",
  );
  await openssl(
    "req",
    ...key,
    "-keyout",
    "server.key",
    "-out",
    "server.csr",
    "-subj",
    "/CN=127.0.0.1",
  );
  await Deno.writeTextFile(
    `${dir}/san.ext`,
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
  );
  await openssl(
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "server.pem",
    "-days",
    "1",
    "-extfile",
    "san.ext",
  );
  // A client certificate signed by the same CA.
  await openssl(
    "req",
    ...key,
    "-keyout",
    "client.key",
    "-out",
    "client.csr",
    "-subj",
    "/CN=mpipe client",
  );
  await Deno.writeTextFile(
    `${dir}/client.ext`,
    "extendedKeyUsage=clientAuth\n",
  );
  await openssl(
    "x509",
    "-req",
    "-in",
    "client.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "client.pem",
    "-days",
    "1",
    "-extfile",
    "client.ext",
  );
}

/** Runs 20 tasks through a remote stage on `cluster` with a host started with `flags` (and `grants`), and checks the results. */
async function runOnce(
  url: string,
  cluster: JetStreamCluster,
  name: string,
  flags: string[],
  grants?: HostGrants,
): Promise<void> {
  await withHosts(url, [name], async () => {
    const pipe = new Pipeline<number, number>(
      new OrderedStage((x: number) => x * 3, 8, { cluster }),
    );
    for (let i = 0; i < 20; i++) pipe.put(i);
    pipe.put(null);
    assert.deepEqual(
      await Array.fromAsync(pipe),
      Array.from({ length: 20 }, (_, i) => i * 3),
    );
  }, [
    "--trust",
    TEST_KEYS.publicKey,
    "--allow-source",
    "--workers",
    "1",
    ...flags,
  ], grants);
}

timed(
  "JetStream: a server with a token: the cluster and the hosts log in with it; a wrong token is refused, by the cluster and by a host",
  90_000,
  async () => {
    await using server = await NatsServer.start(["--auth", "t0ken-s3cret"]);
    await assert.rejects(
      JetStreamCluster.connect(clusterOptions(server.url, { token: "wrong" })),
      /Authorization|authorization|auth/,
    );
    await assert.rejects(
      HostProcess.start(server.url, "token-bad", ["--token", "wrong"]),
      /Authorization|authorization|auth/,
    );
    await using cluster = await JetStreamCluster.connect(
      clusterOptions(server.url, { token: "t0ken-s3cret" }),
    );
    await runOnce(server.url, cluster, "token-1", ["--token", "t0ken-s3cret"]);
  },
);

/**
 * An operator, an account with JetStream, and a user of it, made as `nsc`
 * would (test-only npm packages, pinned): the server's configuration in
 * operator mode with a memory resolver, and the user's `.creds` file.
 */
async function operatorMode(dir: string): Promise<{
  config: string;
  creds: string;
  otherCreds: string;
}> {
  const { createAccount, createOperator, createUser } = await import(
    "@nats-io/nkeys"
  );
  const { encodeAccount, encodeOperator, encodeUser, fmtCreds } = await import(
    "@nats-io/jwt"
  );
  const operator = createOperator();
  const account = createAccount();
  const user = createUser();
  const operatorJwt = await encodeOperator("mpipe-op", operator);
  const accountJwt = await encodeAccount("mpipe", account, {
    // Unset limits are 0 (no connection allowed): -1 is no limit.
    limits: {
      conn: -1,
      subs: -1,
      data: -1,
      payload: -1,
      imports: -1,
      exports: -1,
      leaf: -1,
      wildcards: true,
      mem_storage: -1,
      disk_storage: -1,
      streams: -1,
      consumer: -1,
    },
  }, { signer: operator });
  const userJwt = await encodeUser("mpipe-user", user, account);
  // JetStream needs a system account.
  const system = createAccount();
  const systemJwt = await encodeAccount("SYS", system, {}, {
    signer: operator,
  });
  // A user signed by an account the server does not know.
  const stranger = createAccount();
  const otherJwt = await encodeUser("stranger", createUser(), stranger);
  const config = `${dir}/server.conf`;
  await Deno.writeTextFile(
    config,
    `operator: ${operatorJwt}
system_account: ${system.getPublicKey()}
resolver: MEMORY
resolver_preload: {
  ${account.getPublicKey()}: ${accountJwt}
  ${system.getPublicKey()}: ${systemJwt}
}
`,
  );
  const creds = `${dir}/user.creds`;
  await Deno.writeFile(creds, fmtCreds(userJwt, user));
  const otherCreds = `${dir}/stranger.creds`;
  await Deno.writeFile(otherCreds, fmtCreds(otherJwt, createUser()));
  return { config, creds, otherCreds };
}

timed(
  "JetStream: a server in operator mode: the cluster and the hosts log in with a .creds file; a user of an unknown account is refused",
  90_000,
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "mpipe-creds-" });
    try {
      const { config, creds, otherCreds } = await operatorMode(dir);
      await using server = await NatsServer.start(["-c", config]);
      await assert.rejects(
        JetStreamCluster.connect(
          clusterOptions(server.url, { credentials: otherCreds }),
        ),
        /Authorization|authorization|auth/,
      );
      await assert.rejects(
        HostProcess.start(server.url, "creds-bad", ["--creds", otherCreds], {
          read: [dir],
        }),
        /Authorization|authorization|auth/,
      );
      await using cluster = await JetStreamCluster.connect(
        clusterOptions(server.url, { credentials: creds }),
      );
      await runOnce(server.url, cluster, "creds-1", ["--creds", creds], {
        read: [dir],
      });
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

timed(
  "JetStream: logins refused 200 times over never crash the process: each is a rejected connect (a reset socket is not an uncaught error)",
  90_000,
  async () => {
    await using server = await NatsServer.start([
      "--user",
      "mpipe",
      "--pass",
      "s3cret",
    ]);
    // The server closes a refused connection at once; the client's read
    // then often ends in ECONNRESET after the client has dropped its
    // socket's listeners, which was thrown as an uncaught error.
    for (let i = 0; i < 200; i++) {
      await assert.rejects(
        JetStreamCluster.connect({
          servers: server.url,
          user: "mpipe",
          pass: "wrong",
        }),
        /Authorization|authorization|auth/,
      );
    }
    // Let any late socket error land inside this test.
    await sleep(200);
  },
);

timed(
  "JetStream: a server that verifies client certificates: the cluster and the hosts log in with theirs",
  90_000,
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "mpipe-mtls-" });
    try {
      await makeCertificates(dir);
      await using server = await NatsServer.start([
        "--tlsverify",
        "--tlscert",
        `${dir}/server.pem`,
        "--tlskey",
        `${dir}/server.key`,
        "--tlscacert",
        `${dir}/ca.pem`,
      ]);
      // A client without a certificate is refused, and nothing else: the
      // server's BadCertificate alert, often in the read that ends the
      // handshake, was an uncaught error. (The client then notices the
      // lost connection only at its connect timeout, hence a short one.)
      for (let i = 0; i < 5; i++) {
        await assert.rejects(
          connect({
            servers: server.url,
            tls: { caFile: `${dir}/ca.pem` },
            timeout: 2_000,
          }),
        );
      }
      await sleep(200);
      const tls = {
        caFile: `${dir}/ca.pem`,
        certFile: `${dir}/client.pem`,
        keyFile: `${dir}/client.key`,
      };
      await using cluster = await JetStreamCluster.connect(
        clusterOptions(server.url, { tls }),
      );
      await runOnce(server.url, cluster, "mtls-1", [
        "--tls-ca",
        tls.caFile,
        "--tls-cert",
        tls.certFile,
        "--tls-key",
        tls.keyFile,
      ], { read: [dir] });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

// ---------------------------------------------------------------- clean-up

timed(
  "JetStream: a run's streams and consumers are removed when its pipeline is done, or terminated",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["clean-1"], async () => {
      const pipe = new Pipeline<number, number>(
        new OrderedStage((x: number) => x, 4, { cluster }),
      );
      pipe.put(1);
      assert.equal(await pipe.get(), 1);
      assert.equal((await runStreams(URL_)).length, 1);
      pipe.put(null);
      assert.equal(await pipe.get(), null);
      await pipe.done;
      assert.deepEqual(await runStreams(URL_), []);

      const terminated = new Pipeline<number, number>(
        new OrderedStage((x: number) => x, 4, { cluster }),
      );
      terminated.put(1);
      assert.equal(await terminated.get(), 1);
      terminated.terminate();
      await terminated.done;
      assert.deepEqual(await runStreams(URL_), []);

      // The cluster closed as soon as the results are read (the end of a
      // program's `await using` scope), while the pipeline is still ending.
      const early = await JetStreamCluster.connect(clusterOptions(URL_));
      const ending = new Pipeline<number, number>(
        new OrderedStage((x: number) => x, 4, { cluster: early }),
      );
      ending.put(1);
      ending.put(null);
      assert.deepEqual(await Array.fromAsync(ending), [1]);
      await early.close();
      await ending.done;
      assert.deepEqual(await runStreams(URL_), []);
    });
  },
);

Deno.test({
  name:
    "JetStream: (the end) no run left a stream behind, and the test server stops",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assert.deepEqual(await runStreams(URL_), []);
    await stopSharedServer();
  },
});
