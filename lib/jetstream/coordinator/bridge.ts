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
 * once.
 *
 * Loaded by the stand-in worker as a module target (see `remote.ts`).
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
import { ensureStagesStream } from "./cluster.ts";
import {
  AckPolicy,
  DiscardPolicy,
  jetstream,
  type JetStreamClient,
  type JetStreamManager,
  jetstreamManager,
  type NatsConnection,
  RetentionPolicy,
  StorageType,
} from "../connection.ts";
import {
  ANNOUNCE_EVERY_MS,
  announcementMessage,
  ANSWER,
  apiCode,
  BATCH_HEADER,
  batchMessage,
  bodyLimit,
  type ConnectionOptions,
  connectNats,
  Decoder,
  Encoder,
  HEADER_ROOM,
  importSigningKey,
  MANY,
  MessageReader,
  nanosOf,
  newToken,
  NONE,
  noResponders,
  ONE,
  permanent,
  REFUSED,
  sameToken,
  type StageSpec,
  TOKEN_AT,
  TOKEN_BYTES,
  writeBatchHeader,
} from "../protocol.ts";

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
}

/** Tasks sent in one message, numbered from `from`, until each is settled. */
interface Sent {
  from: number;
  /** The batch's token: only an answer that echoes it counts. */
  token: Uint8Array;
  /** 1 for each task settled. */
  settled: Uint8Array;
  /** Tasks not yet settled. */
  left: number;
}

/**
 * The stand-in worker class of a remote stage. It takes its tasks in
 * batches from the runtime (`SendTasks`, see batch_runner.ts) rather than
 * through `doTask`, so that a task costs no Promise of its own.
 */
export default class Bridge extends UnorderedWorker<unknown, unknown> {
  readonly #config: BridgeConfig;
  readonly #encoder = new Encoder();
  readonly #decoder = new Decoder();
  #nc: NatsConnection | null = null;
  #js: JetStreamClient | null = null;
  #jsm: JetStreamManager | null = null;
  /** Set once the stage failed for good (`#fail`). */
  #failed = false;
  /** Sent batches with tasks not settled, by their first task's number. */
  readonly #sent = new Map<number, Sent>();
  /** How the runtime is told of settled tasks (given with the first tasks). */
  #settler: TaskSettler | null = null;
  /** Set once a host refused the stage: every task fails with it. */
  #refusal: RemoteFailure | null = null;
  /** The most bytes of a message's body (the server's max_payload, less room for headers). */
  #maxBody = bodyLimit(1 << 20);
  #signingKey: CryptoKey | null = null;
  /** Answers and refusals dropped because they did not echo their batch's token (forged), and when that was last reported. */
  #forged = 0;
  #forgedReported = 0;
  /** The hosts that answered so far, told to the main thread as each first does (the dashboard shows them). */
  readonly #hosts = new Set<string>();

  /** Makes the bridge of the stage that `config` describes. */
  constructor(config: BridgeConfig) {
    super();
    this.#config = config;
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
      // The last delivery is answered with an error, not run (see host.ts).
      max_deliver: spec.maxDeliver,
      // Stage-wide across hosts: every message holds at least one task.
      max_ack_pending: size,
    });
    await jsm.consumers.add(spec.stream, {
      durable_name: "bridge",
      filter_subject: spec.outSubject,
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanosOf(60_000),
      max_ack_pending: 2 * size + 64,
    });
    this.#js = jetstream(nc);
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

  /** Fails the stage if its stream is gone. */
  #checkStream(): void {
    if (this.#failed) return;
    const { stream } = this.#config.spec;
    this.#jsm!.streams.info(stream).then(undefined, (error) => {
      if (apiCode(error) === 10059) this.#lost();
    });
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
      for (let i = 0; i < count; i++) settler.reject(first + i, this.#refusal);
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

  /** Sends a batch message of `count` tasks numbered from `from`, with its token. */
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
      );
      this.#settler!.flush();
      return;
    }
    this.#sent.set(from, {
      from,
      token,
      settled: new Uint8Array(count),
      left: count,
    });
    this.#publish(message, `b${from}`, 0);
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
    msgID: string,
    attempt: number,
    since = performance.now(),
  ): void {
    if (this.#failed) return;
    const { inSubject, stream } = this.#config.spec;
    this.#js!.publish(inSubject, bytes, { msgID, timeout: 5_000 }).then(
      undefined,
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
          () => this.#publish(bytes, msgID, attempt + 1, since),
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
            this.#answer(message.data);
          } catch {
            // Malformed (DataView's reads throw RangeError too): not a
            // host's answer.
            this.#forgery();
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

  /**
   * Settles the tasks an answer covers (each once: a repeat is dropped).
   * An answer counts only for the tasks of the batch whose token it echoes
   * (a batch split into single tasks gives them its token): the rest is
   * forged, dropped and counted.
   */
  #answer(bytes: Uint8Array): void {
    const settler = this.#settler;
    if (settler === null || bytes.length < TOKEN_AT + TOKEN_BYTES) {
      return this.#forgery();
    }
    const reader = new MessageReader(bytes);
    const kind = reader.u32();
    if (kind !== ANSWER && kind !== REFUSED) return this.#forgery();
    const count = reader.u32();
    const from = reader.f64();
    reader.at = TOKEN_AT + TOKEN_BYTES;
    const batch = this.#sent.get(from);
    if (kind === REFUSED) {
      // A refusal answers a batch it was delivered.
      const owner = batch ?? this.#sentWith(from);
      if (owner === undefined) return;
      if (!sameToken(bytes, TOKEN_AT, owner.token)) return this.#forgery();
      reader.at = BATCH_HEADER;
      const [host, reason] = reader.record(this.#decoder) as [string, string];
      return this.#refuse(host, reason);
    }
    const worker = reader.i32();
    const host = reader.text();
    /** The batch last checked against the answer's token, and whether it matched. */
    let checked: Sent | undefined;
    let genuine = false;
    let forged = false;
    let settled = false;
    try {
      for (let i = 0; i < count; i++) {
        const tag = reader.u8();
        const n = tag === MANY ? reader.varint() : tag === NONE ? 0 : 1;
        // Most answers cover one whole batch; a redelivered batch is split
        // into single tasks, each answered on its own.
        const task = from + i;
        const owner = batch !== undefined && i < batch.settled.length
          ? batch
          : this.#sentWith(task);
        if (owner !== undefined && owner !== checked) {
          checked = owner;
          genuine = sameToken(bytes, TOKEN_AT, owner.token);
          if (!genuine) forged = true;
        }
        const index = owner === undefined ? 0 : task - owner.from;
        if (owner === undefined || !genuine || owner.settled[index] === 1) {
          for (let j = 0; j < n; j++) reader.frame();
          continue;
        }
        owner.settled[index] = 1;
        settled = true;
        if (--owner.left === 0) this.#sent.delete(owner.from);
        if (tag === ONE) settler.resolve(task, reader.recordBytes());
        else if (tag === NONE) settler.resolve(task, null);
        else if (tag === MANY) {
          const records: Uint8Array[] = [];
          for (let j = 0; j < n; j++) records.push(reader.recordBytes());
          settler.resolveMany(task, records);
        } else {
          settler.reject(
            task,
            {
              mpipeRemote: {
                host,
                worker: worker < 0 ? undefined : worker,
                what: undefined,
              },
              error: reader.record(this.#decoder),
            } satisfies RemoteFailure,
          );
        }
      }
    } finally {
      settler.flush();
    }
    if (forged) this.#forgery();
    if (settled && !this.#hosts.has(host)) {
      this.#hosts.add(host);
      WorkerScope.post({ type: "hosts", hosts: [...this.#hosts] });
    }
  }

  /**
   * Counts an answer or refusal that did not come from a host that holds
   * its tasks (it lacks their batch's token), and reports the count on
   * stderr, at most every 10 s.
   */
  #forgery(): void {
    this.#forged++;
    const now = performance.now();
    if (this.#forgedReported !== 0 && now - this.#forgedReported < 10_000) {
      return;
    }
    this.#forgedReported = now;
    console.warn(
      `mpipe: remote stage '${this.#config.spec.name}': dropped ${this.#forged} answer(s) that no host holding their tasks sent (they lack their batch's token): a client other than your hosts publishes to ${this.#config.spec.outSubject}; see README "Securing the cluster"`,
    );
  }

  /** The sent batch that holds task `task`, if it is not settled. */
  #sentWith(task: number): Sent | undefined {
    for (const sent of this.#sent.values()) {
      if (task >= sent.from && task < sent.from + sent.settled.length) {
        return sent;
      }
    }
    return undefined;
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
    const settler = this.#settler!;
    for (const sent of this.#sent.values()) {
      for (let i = 0; i < sent.settled.length; i++) {
        if (sent.settled[i] !== 1) {
          settler.reject(sent.from + i, this.#refusal);
        }
      }
    }
    this.#sent.clear();
    settler.flush();
  }
}
