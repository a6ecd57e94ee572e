// Attacks on remote stages, against a real nats-server and real worker
// hosts: each test is the attack itself, made by a client that can reach the
// server but holds no signing key (issue 24, S1 to S3). Every test is
// bounded in time and stops the processes it starts.

import assert from "node:assert/strict";
import { OrderedStage, Pipeline, StageError } from "../mod.ts";
import { JetStreamCluster } from "../jetstream.ts";
import {
  AckPolicy,
  connect,
  jetstream,
  jetstreamManager,
  type NatsConnection,
  RetentionPolicy,
} from "../lib/jetstream/connection.ts";
import {
  announcementMessage,
  readAnnouncement,
  type StageSpec,
} from "../lib/jetstream/announcements.ts";
import {
  ANSWER,
  BATCH,
  decodeMessage,
  Decoder,
  encodeMessage,
  Encoder,
  MessageWriter,
  ONE,
  REFUSED,
} from "../lib/jetstream/messages.ts";
import { generateKeys, importSigningKey } from "../lib/jetstream/keys.ts";
import { ensureStagesStream, stageNames } from "../lib/jetstream/streams.ts";
import { isUnder } from "../lib/jetstream/host/trust.ts";
import { until } from "./support/bounded.ts";
import {
  clusterOptions,
  HostProcess,
  natsUrl,
  stopSharedServer,
  TEST_KEYS,
  timed,
} from "./support/nats.ts";

const URL_ = await natsUrl();
const FIXTURES = new URL("./fixtures/", import.meta.url).href;

/** An attacker's connection: a plain client of the server. */
async function attacker(): Promise<NatsConnection> {
  return await connect({ servers: URL_, name: "attacker" });
}

// ---------------------------------------------------------------- S1

/** A stage of the attacker's run `run`, as a bridge would make it; returns its spec. */
async function forgeStage(
  nc: NatsConnection,
  run: string,
  source: string,
): Promise<StageSpec> {
  const names = stageNames(run, 0);
  const jsm = await jetstreamManager(nc);
  await ensureStagesStream(jsm);
  await jsm.streams.add({
    name: names.stream,
    subjects: [names.inSubject, names.outSubject, `${names.aloneSubject}.>`],
    retention: RetentionPolicy.Workqueue,
  });
  await jsm.consumers.add(names.stream, {
    durable_name: "hosts",
    filter_subject: names.inSubject,
    ack_policy: AckPolicy.Explicit,
  });
  return {
    protocol: 2,
    run,
    index: 0,
    name: "evil",
    stream: names.stream,
    inSubject: names.inSubject,
    outSubject: names.outSubject,
    aloneSubject: names.aloneSubject,
    target: { kind: "source", source, binding: "", namespace: false },
    args: [],
    concurrency: 1,
    ackWait: 30_000,
    maxAttempts: 3,
    maxDeliver: 16,
    taskTimeout: 0,
    issued: Date.now(),
  };
}

/** A batch of one task, `task`, numbered 0, in either message layout (with a token, or the layout before tokens). */
function forgedBatch(task: unknown, withToken: boolean): Uint8Array {
  const encoder = new Encoder();
  const writer = new MessageWriter();
  writer.u32(BATCH);
  writer.u32(1);
  writer.f64(0);
  if (withToken) { for (let i = 0; i < 16; i++) writer.u8(7); }
  writer.record(encoder, task);
  return writer.take();
}

timed(
  "JetStream attack S1: forged stage announcements (unsigned, signed by an unknown key, replayed, or bound to another stage) never run on a host that trusts a key",
  90_000,
  async () => {
    const nc = await attacker();
    const js = jetstream(nc);
    const encoder = new Encoder();
    const evil = "(x) => `pwned by ${x}`";
    const runs: string[] = [];
    try {
      const stranger = await generateKeys();
      const strangerKey = await importSigningKey(stranger.signingKey, "test");
      const ourKey = await importSigningKey(TEST_KEYS.signingKey, "test");
      const forgeries: [string, (spec: StageSpec) => Promise<Uint8Array>][] = [
        // The layout before signatures: the spec alone.
        ["evilold", (spec) => Promise.resolve(encodeMessage(encoder, spec))],
        ["evilunsigned", (spec) => announcementMessage(encoder, spec, null)],
        [
          "evilstranger",
          (spec) => announcementMessage(encoder, spec, strangerKey),
        ],
        // A genuine announcement seen long ago, replayed.
        [
          "evilreplay",
          (spec) =>
            announcementMessage(
              encoder,
              { ...spec, issued: Date.now() - 3_600_000 },
              ourKey,
            ),
        ],
      ];
      for (const [run, make] of forgeries) {
        runs.push(run);
        const spec = await forgeStage(nc, run, evil);
        await js.publish(stageNames(run, 0).inSubject, forgedBatch(run, true));
        await js.publish(stageNames(run, 0).announcement, await make(spec));
      }
      // A genuine announcement of run "evilbound", sent on the subject of
      // another run: bound to its own.
      runs.push("evilbound", "evilother");
      const bound = await forgeStage(nc, "evilbound", evil);
      await forgeStage(nc, "evilother", evil);
      await js.publish(
        stageNames("evilother", 0).inSubject,
        forgedBatch("evilother", true),
      );
      await js.publish(
        stageNames("evilother", 0).announcement,
        await announcementMessage(encoder, bound, strangerKey),
      );

      const host = await HostProcess.start(URL_, "trusting-1");
      try {
        // A genuine pipeline runs on the same host, after the forgeries
        // were announced.
        await using cluster = await JetStreamCluster.connect(
          clusterOptions(URL_),
        );
        const pipe = new Pipeline<number, number>(
          new OrderedStage((x: number) => x + 1, 4, { cluster }),
        );
        for (let i = 0; i < 5; i++) pipe.put(i);
        pipe.put(null);
        assert.deepEqual(await Array.fromAsync(pipe), [1, 2, 3, 4, 5]);
      } finally {
        await host.stop();
      }
      const jsm = await jetstreamManager(nc);
      for (const run of runs) {
        const names = stageNames(run, 0);
        const info = await jsm.streams.info(names.stream, {
          subjects_filter: ">",
        });
        const subjects = info.state.subjects ?? {};
        assert.equal(
          subjects[names.outSubject] ?? 0,
          0,
          `the host answered the forged stage ${run}: it ran the attacker's code`,
        );
      }
      assert.match(host.output, /ignored \d+ stage announcement/);
    } finally {
      const jsm = await jetstreamManager(nc);
      for (const run of runs) {
        await jsm.streams.delete(stageNames(run, 0).stream).catch(() => {});
        await jsm.streams.purge("MPIPE_STAGES", {
          filter: stageNames(run, 0).announcement,
        }).catch(() => {});
      }
      await nc.close();
    }
  },
);

timed(
  "JetStream S1: a host refuses to start with --allow-source but no --trust, and needs no -A (tests run hosts with the README's permissions)",
  60_000,
  async () => {
    await assert.rejects(
      HostProcess.start(URL_, "untrusting-1", ["--allow-source"]),
      /allowSource' needs 'options.trust' \(--trust PUBLIC_KEY\)/,
    );
    await assert.rejects(
      HostProcess.start(URL_, "untrusting-2", [
        "--trust",
        TEST_KEYS.signingKey,
      ]),
      /that is a signing key, which only coordinators may hold/,
    );
  },
);

// ---------------------------------------------------------------- S2

timed(
  "JetStream attack S2: --allow-target compares normalized URLs on path-segment boundaries: a `..` escape and a prefix without its slash are refused",
  90_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    const attempts: [string, string][] = [
      // Normalized, this is tests/fixtures/square.ts, outside allowed/.
      [`${FIXTURES}allowed/`, `${FIXTURES}allowed/../square.ts`],
      [`${FIXTURES}allowed/`, `${FIXTURES}allowed/%2e%2e/square.ts`],
      // The prefix names a directory "squ": square.ts is not in it.
      [`${FIXTURES}squ`, `${FIXTURES}square.ts`],
    ];
    for (const [index, [prefix, target]] of attempts.entries()) {
      const host = await HostProcess.start(URL_, `prefix-${index}`, [
        "--trust",
        TEST_KEYS.publicKey,
        "--allow-target",
        prefix,
      ]);
      try {
        const pipe = new Pipeline<number, number>(
          new OrderedStage<number, number>(target, 4, { cluster }),
        );
        pipe.put(3).catch(() => {});
        pipe.put(null).catch(() => {});
        await assert.rejects(
          pipe.get(),
          (error: unknown) => {
            assert.ok(
              error instanceof StageError,
              `${target} under ${prefix}: ${error}`,
            );
            assert.match(error.message, /is not under any URL prefix/);
            return true;
          },
          `the host ran ${target} under --allow-target ${prefix}`,
        );
        await pipe.done.catch(() => {});
      } finally {
        await host.stop();
      }
    }
  },
);

Deno.test("JetStream S2: isUnder compares scheme, host and port, and path segments", () => {
  const yes: [string, string][] = [
    ["file:///srv/a/x.ts", "file:///srv/a/"],
    ["file:///srv/a/x.ts", "file:///srv/a"],
    ["file:///srv/a/b/../x.ts", "file:///srv/a/"],
    ["https://example.com/tasks/x.ts", "https://example.com/tasks/"],
    ["https://example.com/x.ts", "https://example.com"],
  ];
  const no: [string, string][] = [
    ["file:///srv/a/../evil/x.ts", "file:///srv/a/"],
    ["file:///srv/ab.ts", "file:///srv/a"],
    ["file:///srv/a%2F..%2Fevil/x.ts", "file:///srv/a/"],
    ["https://example.com.evil.org/x.ts", "https://example.com"],
    ["https://example.com:8443/tasks/x.ts", "https://example.com/tasks/"],
    ["http://example.com/tasks/x.ts", "https://example.com/tasks/"],
    ["https://user@example.com/tasks/x.ts", "https://example.com/tasks/"],
    ["not a url", "file:///"],
  ];
  for (const [target, prefix] of yes) {
    assert.ok(isUnder(target, prefix), `${target} under ${prefix}`);
  }
  for (const [target, prefix] of no) {
    assert.ok(!isUnder(target, prefix), `${target} not under ${prefix}`);
  }
});

// ---------------------------------------------------------------- S3

/** The run and out subject of the live stage named `name`, from its announcement (which any client reads). */
async function announcedStage(
  nc: NatsConnection,
  name: string,
): Promise<{ run: string; outSubject: string; stream: string }> {
  const jsm = await jetstreamManager(nc);
  const decoder = new Decoder();
  let found: { run: string; outSubject: string; stream: string } | null = null;
  await until(`the announcement of ${name}`, async () => {
    const info = await jsm.streams.info("MPIPE_STAGES", {
      subjects_filter: ">",
    });
    for (const subject of Object.keys(info.state.subjects ?? {})) {
      const message = await jsm.streams.getMessage("MPIPE_STAGES", {
        last_by_subj: subject,
      });
      if (message === null) continue;
      // Both layouts: the spec alone, or framed with a signature.
      let spec: StageSpec | undefined;
      try {
        spec = (await readAnnouncement(decoder, message.data, []))?.spec;
      } catch { /* The other layout. */ }
      if (spec === undefined || spec.name !== name) {
        try {
          spec = decodeMessage(decoder, message.data) as StageSpec;
        } catch { /* Neither. */ }
      }
      if (spec?.name === name) {
        const names = stageNames(spec.run, spec.index);
        found = {
          run: spec.run,
          outSubject: names.outSubject,
          stream: names.stream,
        };
        return true;
      }
    }
    return false;
  });
  return found!;
}

/** Forged answers for tasks 0..n-1, each giving `value`: in the layout with a token (a guessed one) and in the one before tokens. */
function forgedAnswers(n: number, value: unknown): Uint8Array[] {
  const encoder = new Encoder();
  const record = encodeMessage(encoder, value);
  const make = (withToken: boolean) => {
    const writer = new MessageWriter();
    writer.u32(ANSWER);
    writer.u32(n);
    writer.f64(0);
    if (withToken) { for (let i = 0; i < 16; i++) writer.u8(i); }
    writer.i32(0);
    writer.text("attacker");
    for (let i = 0; i < n; i++) {
      writer.u8(ONE);
      writer.frame(record);
    }
    return writer.take();
  };
  return [make(true), make(false)];
}

/** Forged refusals of task 0's batch: with a guessed token, and in the layout before tokens. */
function forgedRefusals(): Uint8Array[] {
  const encoder = new Encoder();
  const withToken = new MessageWriter();
  withToken.u32(REFUSED);
  withToken.u32(1);
  withToken.f64(0);
  for (let i = 0; i < 16; i++) withToken.u8(i);
  withToken.record(encoder, ["attacker", "forged refusal"]);
  const before = new MessageWriter();
  before.u32(REFUSED);
  before.u32(0);
  before.record(encoder, ["attacker", "forged refusal"]);
  return [withToken.take(), before.take()];
}

/** Waits until the stage's bridge has read every answer on its stream. */
async function answersRead(nc: NatsConnection, stream: string): Promise<void> {
  const jsm = await jetstreamManager(nc);
  await until("the bridge to read the forged answers", async () => {
    const info = await jsm.consumers.info(stream, "bridge");
    return info.num_pending === 0 && info.num_ack_pending === 0;
  });
}

timed(
  "JetStream: a remote stage's permissions option is refused at construction, not ignored: its tasks run with their hosts' permissions",
  10_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    const f = (x: number) => x;
    for (const permissions of ["none", { read: true }] as const) {
      assert.throws(
        () => new OrderedStage(f, 2, { cluster, permissions }),
        (error: unknown) =>
          error instanceof TypeError &&
          /'options\.permissions' cannot be used with 'options\.cluster': a remote stage runs with the permissions of the hosts/
            .test(error.message),
      );
    }
    // "inherit" (the hosts' own) is what a remote stage gets.
    assert.equal(
      new OrderedStage(f, 2, { cluster, permissions: "inherit" }).size,
      2,
    );
  },
);

timed(
  "JetStream attack S3: forged answers for every task in flight, and a forged refusal, are dropped: the pipeline gets the hosts' results and succeeds",
  90_000,
  async () => {
    const nc = await attacker();
    const js = jetstream(nc);
    try {
      await using cluster = await JetStreamCluster.connect(
        clusterOptions(URL_),
      );
      const N = 40;
      // No host yet: the tasks wait in the stream while the attacker acts.
      const pipe = new Pipeline<number, number | string>(
        new OrderedStage((x: number) => x * 10, 64, {
          cluster,
          name: "victim",
        }),
      );
      for (let i = 0; i < N; i++) pipe.put(i);
      pipe.put(null);
      const { outSubject, stream } = await announcedStage(nc, "victim");
      const jsm = await jetstreamManager(nc);
      await until("the tasks to be sent", async () => {
        const info = await jsm.consumers.info(stream, "hosts");
        return info.num_pending > 0;
      });
      for (const forged of [...forgedRefusals(), ...forgedAnswers(N, "x")]) {
        await js.publish(outSubject, forged);
      }
      await answersRead(nc, stream);
      const host = await HostProcess.start(URL_, "holder-1");
      try {
        assert.deepEqual(
          await Array.fromAsync(pipe),
          Array.from({ length: N }, (_, i) => i * 10),
        );
        await pipe.done;
      } finally {
        await host.stop();
      }
    } finally {
      await nc.close();
    }
  },
);

Deno.test({
  name:
    "JetStream security: (the end) no run left a stream behind, and the test server stops",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const nc = await connect({ servers: URL_ });
    try {
      const jsm = await jetstreamManager(nc);
      const names: string[] = [];
      for await (const name of jsm.streams.names()) {
        if (name !== "MPIPE_STAGES") names.push(name);
      }
      assert.deepEqual(names, []);
    } finally {
      await nc.close();
    }
    await stopSharedServer();
  },
});
