/**
 * The stand-in of a remote stage on the coordinator: one local worker, run
 * with `concurrency` = the stage's size, whose every task settles when its
 * result comes back from a worker host.
 *
 * The engine around it gives ordering (an ordered stage writes results in
 * task order), backpressure (at most `size` tasks in flight), the stop (it
 * waits for every task in flight) and error handling (a failed task is a
 * task error). The bridge only carries tasks: the runtime hands it the
 * tasks of each turn at once (see `SendTasks` in batch_runner.ts), it
 * sends them as one message (a batch) or a few, reads the hosts' answers,
 * and settles each task once, however many answers come for it (a
 * redelivered batch is answered again): results reach the reader exactly
 * once. Under the stage's `retry`, the runtime hands it a failed task
 * again, alone, which it sends anew (see `SentBatches`). It also hears its
 * hosts (see host_beats.ts): the batches of a host that falls silent go to
 * other hosts within seconds (`#recover`).
 *
 * Loaded by the stand-in worker as a module target (see `cluster.ts`;
 * `stage/cluster.ts` is the contract).
 *
 * @module
 */

import type { RemoteFailure } from "../../stage/cluster.ts";
import type {
  SendTasks,
  TaskSettler,
} from "../../worker_thread/batch_runner.ts";
import { UnorderedWorker } from "../../stage/worker.ts";
import { WorkerScope } from "../../worker_thread/scope.ts";
import {
  AckPolicy,
  apiCode,
  type ConnectionOptions,
  connectNats,
  DiscardPolicy,
  headers,
  jetstream,
  type JetStreamClient,
  type JetStreamManager,
  jetstreamManager,
  type NatsConnection,
  noResponders,
  permanent,
  RetentionPolicy,
  StorageType,
} from "../connection.ts";
import {
  ANNOUNCE_EVERY_MS,
  announcementMessage,
  type StageSpec,
} from "../announcements.ts";
import {
  BATCH_HEADER,
  batchMessage,
  bodyLimit,
  Encoder,
  HEADER_ROOM,
  LOST,
  MessageReader,
  newToken,
  readBatch,
  singlesOf,
  writeBatchHeader,
} from "../messages.ts";
import { importSigningKey } from "../keys.ts";
import {
  ensureStagesStream,
  HOST_BEAT_MS,
  nanosOf,
  stageNames,
} from "../streams.ts";
import { HostBeats } from "./host_beats.ts";
import { type Sent, SentBatches } from "./sent_batches.ts";

/** What the cluster gives a remote stage's bridge (structured-cloneable). */
export interface BridgeConfig {
  connection: ConnectionOptions;
  spec: StageSpec;
  /** The subject of the stage's announcement. */
  announcement: string;
  /** How many tasks may be in flight (the stage's size). */
  size: number;
  /** The most tasks per message. */
  maxBatch: number;
  /** The coordinator's Ed25519 signing key (as `generateKeys` makes it), or null to announce unsigned. */
  signingKey: string | null;
  /** Milliseconds the stage may have tasks in flight and no host (`Infinity`: it waits). */
  hostTimeout: number;
}

/**
 * The stand-in worker class of a remote stage. It takes its tasks in
 * batches from the runtime (`SendTasks`, see batch_runner.ts) rather than
 * through `doTask`, so that a task costs no Promise of its own.
 */
export default class Bridge extends UnorderedWorker<unknown, unknown> {
  readonly #config: BridgeConfig;
  readonly #encoder = new Encoder();
  #nc: NatsConnection | null = null;
  #js: JetStreamClient | null = null;
  #jsm: JetStreamManager | null = null;
  /** Set once the stage failed for good (`#fail`). */
  #failed = false;
  /** Sent batches with tasks not settled. */
  readonly #sent: SentBatches;
  /** How the runtime is told of settled tasks (given with the first tasks). */
  #settler: TaskSettler | null = null;
  /** Set once a host refused the stage: every task fails with it. */
  #refusal: RemoteFailure | null = null;
  /** The most bytes of a message's body (the server's max_payload, less room for headers). */
  #maxBody = bodyLimit(1 << 20);
  #signingKey: CryptoKey | null = null;
  /** When a host last said it serves the stage, or the bridge started (performance.now()). */
  #hostSeen = performance.now();

  /** Makes the bridge of the stage that `config` describes. */
  constructor(config: BridgeConfig) {
    super();
    this.#config = config;
    this.#sent = new SentBatches(
      config.spec.name,
      config.spec.outSubject,
      config.spec.maxAttempts,
      (hosts) => WorkerScope.post({ type: "hosts", hosts }),
    );
    const send: SendTasks = (first, count, records, settler) =>
      this.#sendTasks(first, count, records, settler);
    (this as unknown as Record<symbol, unknown>)[
      Symbol.for("mpipe.sendTasks")
    ] = send;
  }

  /** Connects, makes the stage's stream and consumers, announces the stage, and reads answers. */
  override async doInit(): Promise<void> {
    const { connection, spec, size } = this.#config;
    if (this.#config.signingKey !== null) {
      this.#signingKey = await importSigningKey(
        this.#config.signingKey,
        "JetStreamCluster.connect: 'options.signingKey'",
      );
    }
    const nc = await connectNats(connection, `mpipe bridge ${spec.name}`);
    this.#nc = nc;
    this.#maxBody = bodyLimit(nc.info?.max_payload ?? 1 << 20);
    const jsm = await jetstreamManager(nc);
    this.#jsm = jsm;
    await ensureStagesStream(jsm);
    // Work-queue: a message is removed once acked. In flight at once: at
    // most `size` tasks, so at most that many batches and answers, and as
    // many again while a redelivered batch is split; the cap is a guard.
    await jsm.streams.add({
      name: spec.stream,
      subjects: [spec.inSubject, spec.outSubject, `${spec.aloneSubject}.>`],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      max_msgs: 4 * size + 64,
      discard: DiscardPolicy.New,
    });
    await jsm.consumers.add(spec.stream, {
      durable_name: "hosts",
      filter_subject: spec.inSubject,
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanosOf(spec.ackWait),
      // The last delivery is answered with an error, not run (see host/worker_host.ts).
      max_deliver: spec.maxDeliver,
      // Stage-wide across hosts: every message holds at least one task;
      // twice, for the deliveries to a lost host that wait for ackWait
      // while their tasks run again (see #recover).
      max_ack_pending: 2 * size,
    });
    await jsm.consumers.add(spec.stream, {
      durable_name: "bridge",
      filter_subject: spec.outSubject,
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanosOf(60_000),
      max_ack_pending: 2 * size + 64,
    });
    this.#js = jetstream(nc);
    // Hosts that serve the stage say so, with the batches they hold (see
    // HOST_BEAT_MS); those of a host that falls silent go to others.
    this.#hostSeen = performance.now();
    const beats = new HostBeats(spec.stream, (subject) => {
      try {
        nc.publish(subject, "-NAK");
      } catch { /* Closing. */ }
    });
    nc.subscribe(stageNames(spec.run, spec.index).hostsSubject, {
      callback: (_, message) => {
        this.#hostSeen = performance.now();
        beats.heard(message.string());
      },
    });
    setInterval(() => {
      const naked = beats.check();
      // Batches given to a lost host just before it died are on no list:
      // once the live hosts have listed theirs again, find them.
      if (naked !== null) {
        setTimeout(() => this.#recover(beats, naked), HOST_BEAT_MS + 500);
      }
    }, Bridge.BEATS_CHECK_MS);
    await this.#announce();
    // Announced again, newly signed, while the stage lives: hosts take a
    // stage not announced again for ANNOUNCE_TTL_MS as gone, and refuse an
    // announcement issued longer ago (a replay).
    setInterval(() => this.#announce().catch(() => {}), ANNOUNCE_EVERY_MS);
    // A stream lost (deleted, or the server restarted on an empty store)
    // fails the stage within this long, even with nothing to publish.
    setInterval(() => this.#checkStream(), Bridge.CHECK_MS);
    this.#readAnswers();
  }

  /** How often the bridge looks for hosts fallen silent (see HostBeats). */
  static readonly BEATS_CHECK_MS = 500;

  /** How often the bridge checks that its stream still exists. */
  static readonly CHECK_MS = 2_000;

  /**
   * How long a batch's publish is retried through transient errors (the
   * server restarting, a timeout) before the stage fails.
   */
  static readonly PUBLISH_GIVE_UP_MS = 60_000;

  /** Publishes the stage's announcement, issued now and signed. */
  async #announce(): Promise<void> {
    const spec: StageSpec = { ...this.#config.spec, issued: Date.now() };
    const message = await announcementMessage(
      this.#encoder,
      spec,
      this.#signingKey,
    );
    try {
      await this.#js!.publish(this.#config.announcement, message);
    } catch (error) {
      if (!noResponders(error)) throw error;
      // MPIPE_STAGES is gone (the server lost its store): make it again.
      await ensureStagesStream(this.#jsm!);
      await this.#js!.publish(this.#config.announcement, message);
    }
  }

  /** Fails the stage if its stream is gone, or if it has had tasks in flight and no host for its hostTimeout. */
  #checkStream(): void {
    if (this.#failed) return;
    const silent = performance.now() - this.#hostSeen;
    if (this.#sent.size > 0 && silent > this.#config.hostTimeout) {
      return this.#fail(
        `no host has served the stage for ${
          Math.round(silent / 1000)
        } s (hostTimeout ${this.#config.hostTimeout} ms), with ${this.#sent.size} batch(es) of tasks waiting`,
        new Error(
          'no host: start worker hosts (deno task host, see README "Scaling out") that trust this coordinator and may run the stage, or raise the cluster\'s hostTimeout',
        ),
      );
    }
    const { stream } = this.#config.spec;
    this.#jsm!.streams.info(stream).then(undefined, (error) => {
      if (apiCode(error) === 10059) this.#lost();
    });
  }

  /**
   * After a host was lost: each stored batch with tasks not settled that
   * was delivered (the consumer's delivered sequence is past it) but that
   * no live host lists and that was not NAKed (`naked`) went to a host
   * that died before it could list it. Its tasks are published again, as
   * single suspects (as a host splits a batch delivered again), and its
   * delivery waits for ackWait. A batch misjudged so runs twice; its
   * results still reach the reader once.
   */
  async #recover(beats: HostBeats, naked: Set<number>): Promise<void> {
    if (this.#failed) return;
    const { stream, inSubject } = this.#config.spec;
    const jsm = this.#jsm!;
    try {
      const info = await jsm.consumers.info(stream, "hosts");
      const delivered = info.delivered.stream_seq;
      const listed = beats.heldSeqs();
      const lost = headers();
      lost.set(LOST, "1");
      for (const seq of this.#sent.storedSeqs()) {
        if (seq > delivered || listed.has(seq) || naked.has(seq)) continue;
        const stored = await jsm.streams.getMessage(stream, { seq })
          .catch(() => null);
        if (stored === null) continue; // Acked meanwhile.
        const singles = singlesOf(stored.data);
        const { from } = readBatch(stored.data);
        await Promise.all(
          singles.map((single, i) =>
            this.#js!.publish(inSubject, single, {
              // As a host's split would (see host/replies.ts), or anew for a
              // single, which a split may have stored as `t<task>` already.
              msgID: singles.length > 1 ? `t${from + i}` : `t${from}.${seq}`,
              timeout: 5_000,
              headers: lost,
            })
          ),
        );
      }
    } catch { /* Cut off: ackWait is the backstop. */ }
  }

  /** The stage's stream is gone while the stage runs: the tasks in it are lost. */
  #lost(): void {
    const { stream } = this.#config.spec;
    this.#fail(
      `the stage's stream ${stream} is gone (deleted, or the server restarted without its store), with the tasks in flight`,
      new Error(
        `JetStream stream ${stream} not found: run the pipeline again; keep the server's store (its -sd directory) across restarts`,
      ),
    );
  }

  /**
   * Fails the stage (whatever its onError): a fault of the cluster, not of
   * a task. Reported once, as a StageError naming the server.
   */
  #fail(what: string, error: unknown): void {
    if (this.#failed) return;
    this.#failed = true;
    WorkerScope.postError({
      type: "error",
      phase: "task",
      task: undefined,
      error: {
        mpipeRemote: {
          host: this.#nc?.getServer() ?? "the NATS server",
          worker: undefined,
          what,
        },
        error,
      } satisfies RemoteFailure,
    });
  }

  /** Not called: the runtime sends the bridge its tasks in batches. */
  doTask(): never {
    throw new Error(
      "unreachable: a remote stage's bridge takes its tasks in batches (mpipe.sendTasks)",
    );
  }

  /**
   * The runtime's tasks of one turn, `count` from number `first`, framed in
   * `records` after the header's room: sent as one message (the header
   * written into that room), or as messages of up to maxBatch tasks.
   */
  #sendTasks(
    first: number,
    count: number,
    records: Uint8Array,
    settler: TaskSettler,
  ): void {
    this.#settler = settler;
    if (this.#refusal !== null) {
      for (let i = 0; i < count; i++) {
        settler.reject(first + i, this.#refusal, "final");
      }
      settler.flush();
      return;
    }
    const max = this.#config.maxBatch;
    if (count <= max && records.length <= this.#maxBody) {
      const token = newToken();
      writeBatchHeader(records, first, count, token);
      return this.#send(first, count, token, records);
    }
    // Split: walk the frames to find each message's end.
    const reader = new MessageReader(records, BATCH_HEADER);
    let from = first;
    let start = BATCH_HEADER;
    let tasks = 0;
    for (let i = 0; i < count; i++) {
      const before = reader.at;
      reader.frame();
      if (
        tasks > 0 &&
        (tasks === max ||
          BATCH_HEADER + reader.at - start > this.#maxBody)
      ) {
        const token = newToken();
        this.#send(
          from,
          tasks,
          token,
          batchMessage(from, tasks, token, records, start, before),
        );
        from += tasks;
        start = before;
        tasks = 0;
      }
      tasks++;
    }
    const token = newToken();
    this.#send(
      from,
      tasks,
      token,
      batchMessage(from, tasks, token, records, start, reader.at),
    );
  }

  /**
   * Sends a batch message of `count` tasks numbered from `from`, with its
   * token (and its message id, see `Sent`).
   */
  #send(
    from: number,
    count: number,
    token: Uint8Array,
    message: Uint8Array,
  ): void {
    if (message.length > this.#maxBody) {
      // One task alone is too large for a message.
      this.#settler!.reject(
        from,
        new RangeError(
          `The task encodes to ${message.length} bytes, more than the ${this.#maxBody} a message's body may carry (the server's max_payload less ${HEADER_ROOM} bytes for headers): split it into smaller tasks, or raise max_payload in the server's configuration`,
        ),
        "final",
      );
      this.#settler!.flush();
      return;
    }
    this.#publish(message, this.#sent.add(from, count, token), 0);
  }

  /**
   * Publishes a batch to the stage's input until the server has stored it:
   * after a transient failure (the server restarts, a timeout) it tries
   * again, with backoff, for up to PUBLISH_GIVE_UP_MS; the message id makes
   * a repeat that was stored after all a duplicate, which the server drops.
   * A permanent failure, or a stream that is gone, fails the stage at once.
   */
  #publish(
    bytes: Uint8Array,
    sent: Sent,
    attempt: number,
    since = performance.now(),
  ): void {
    if (this.#failed) return;
    const { inSubject, stream } = this.#config.spec;
    const { msgID } = sent;
    this.#js!.publish(inSubject, bytes, { msgID, timeout: 5_000 }).then(
      (ack) => sent.seq = ack.seq,
      async (error) => {
        if (this.#failed) return;
        if (permanent(error)) {
          return this.#fail(
            `a batch of tasks could not be stored: the server refused it for good`,
            error,
          );
        }
        if (noResponders(error) || apiCode(error) === 10059) {
          // No stream takes the subject: gone, or the server is starting.
          const gone = await this.#jsm!.streams.info(stream).then(
            () => false,
            (info) => apiCode(info) === 10059,
          );
          if (gone) return this.#lost();
        }
        if (performance.now() - since > Bridge.PUBLISH_GIVE_UP_MS) {
          return this.#fail(
            `a batch of tasks could not be stored in ${
              Bridge.PUBLISH_GIVE_UP_MS / 1000
            } s of trying`,
            error,
          );
        }
        setTimeout(
          () => this.#publish(bytes, sent, attempt + 1, since),
          Math.min(2_000, 25 * 2 ** attempt),
        );
      },
    );
  }

  /** Reads the hosts' answers for as long as the worker runs (or its stream exists). */
  async #readAnswers(): Promise<void> {
    const { stream } = this.#config.spec;
    for (let attempt = 0; !this.#failed; attempt++) {
      try {
        const consumer = await this.#js!.consumers.get(stream, "bridge");
        const messages = await consumer.consume({
          max_messages: 256,
          abort_on_missing_resource: true,
        });
        for await (const message of messages) {
          attempt = 0;
          try {
            const refusal = this.#sent.answer(message.data, this.#settler);
            if (refusal !== null) this.#refuse(...refusal);
          } catch {
            // Malformed (DataView's reads throw RangeError too): not a
            // host's answer.
            this.#sent.forgery();
          } finally {
            message.ack();
          }
        }
      } catch (error) {
        // 10059: the stream is gone; 10014: its consumer is.
        const code = apiCode(error);
        if (code === 10059 || code === 10014) return this.#lost();
      }
      await new Promise((resolve) =>
        setTimeout(resolve, Math.min(2_000, 50 * 2 ** attempt))
      );
    }
  }

  /** A host refused the stage: every task in flight, and every later one, fails. */
  #refuse(host: string, reason: string): void {
    if (this.#refusal !== null) return;
    this.#refusal = {
      mpipeRemote: {
        host,
        worker: undefined,
        what: "the host refused the stage",
      },
      error: new Error(reason),
    };
    this.#sent.rejectAll(this.#settler!, this.#refusal);
  }
}
