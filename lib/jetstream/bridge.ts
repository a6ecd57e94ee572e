/**
 * The stand-in of a remote stage on the coordinator: one local worker, run
 * with `concurrency` = the stage's size, whose every task settles when its
 * result comes back from a worker host.
 *
 * The engine around it gives ordering (an ordered stage writes results in
 * task order), backpressure (at most `size` tasks in flight), the stop (it
 * waits for every task in flight) and error handling (a rejected task is a
 * task error). The bridge only carries tasks: it sends the tasks it starts
 * in one turn as one message (a batch), reads the hosts' answers, and
 * settles each task once, however many answers come for it (a redelivered
 * batch is answered again): results reach the reader exactly once.
 *
 * Loaded by the stand-in worker as a module target (see `remote.ts`).
 *
 * @module
 */

import type { RemoteFailure } from "../remote.ts";
import { UnorderedWorker } from "../worker.ts";
import { ensureStagesStream } from "./cluster.ts";
import {
  AckPolicy,
  DiscardPolicy,
  jetstream,
  type JetStreamClient,
  jetstreamManager,
  type NatsConnection,
  RetentionPolicy,
  StorageType,
} from "./nats.ts";
import {
  apiCode,
  type ConnectionOptions,
  connectNats,
  decodeMessage,
  Decoder,
  encodeMessage,
  Encoder,
  FAILED,
  MANY,
  nanosOf,
  REFUSED,
  type StageSpec,
} from "./protocol.ts";

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
}

/** Tasks sent in one message, numbered from `from`, until each is settled. */
interface Batch {
  from: number;
  /** The tasks, until they are sent. */
  tasks: unknown[];
  resolves: ((result: unknown) => void)[];
  rejects: ((error: unknown) => void)[];
  /** Each task's slot in the worker runtime, to put several results to. */
  slots: unknown[];
  /** 1 for each task settled, once the batch is sent. */
  settled: Uint8Array;
  /** Tasks not yet settled. */
  left: number;
}

/** An entry of an answer's extras: [task index, MANY or FAILED, results or error]. */
type Extra = [number, number, unknown];

/** The stand-in worker class of a remote stage. */
export default class Bridge extends UnorderedWorker<unknown, unknown> {
  readonly #config: BridgeConfig;
  readonly #encoder = new Encoder();
  readonly #decoder = new Decoder();
  #nc: NatsConnection | null = null;
  #js: JetStreamClient | null = null;
  /** The number of the next task (the stage's own count, from 0). */
  #next = 0;
  /** The batch being filled in this turn. */
  #open: Batch | null = null;
  #flushQueued = false;
  /** Sent batches with tasks not settled, by their first task's number. */
  readonly #batches = new Map<number, Batch>();
  /** Set once a host refused the stage: every task fails with it. */
  #refusal: RemoteFailure | null = null;
  #maxPayload = 1 << 20;
  /** The runtime's hooks (installed once doInit has run). */
  #currentTask: (() => unknown) | null = null;
  #putResultTo: ((slot: unknown, result: unknown) => void) | null = null;

  /** Makes the bridge of the stage that `config` describes. */
  constructor(config: BridgeConfig) {
    super();
    this.#config = config;
  }

  /** Connects, makes the stage's stream and consumers, announces the stage, and reads answers. */
  override async doInit(): Promise<void> {
    const { connection, spec, announcement, size } = this.#config;
    const nc = await connectNats(connection, `mpipe bridge ${spec.name}`);
    this.#nc = nc;
    this.#maxPayload = nc.info?.max_payload ?? this.#maxPayload;
    const jsm = await jetstreamManager(nc);
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
    await this.#js.publish(
      announcement,
      encodeMessage(this.#encoder, spec),
    );
    this.#readAnswers();
  }

  /**
   * Sends `task` to the hosts (in this turn's batch) and returns a Promise
   * of its result, or of `null` for none.
   */
  doTask(task: unknown): Promise<unknown> {
    if (this.#refusal !== null) return Promise.reject(this.#refusal);
    const globals = globalThis as Record<symbol, unknown>;
    this.#currentTask ??= globals[Symbol.for("mpipe.currentTask")] as
      | (() => unknown)
      | null;
    let batch = this.#open;
    if (batch === null) {
      batch = this.#open = {
        from: this.#next,
        tasks: [],
        resolves: [],
        rejects: [],
        slots: [],
        settled: new Uint8Array(0),
        left: 0,
      };
      if (!this.#flushQueued) {
        // Every task started in this turn goes in the batch: the runtime
        // starts all it can take before it awaits.
        this.#flushQueued = true;
        queueMicrotask(this.#flush);
      }
    }
    this.#next++;
    batch.tasks.push(task);
    batch.slots.push(this.#currentTask?.());
    const promise = new Promise((resolve, reject) => {
      batch.resolves.push(resolve);
      batch.rejects.push(reject);
    });
    if (batch.tasks.length >= this.#config.maxBatch) {
      this.#open = null;
      this.#send(batch);
    }
    return promise;
  }

  readonly #flush = (): void => {
    this.#flushQueued = false;
    const batch = this.#open;
    this.#open = null;
    if (batch !== null) this.#send(batch);
  };

  /** Sends a batch, in halves if it is larger than a message may be. */
  #send(batch: Batch): void {
    const count = batch.tasks.length;
    const bytes = encodeMessage(this.#encoder, [batch.from, batch.tasks]);
    if (bytes.length > this.#maxPayload) {
      if (count === 1) {
        batch.rejects[0]!(
          new RangeError(
            `The task encodes to ${bytes.length} bytes, more than the ${this.#maxPayload} a message to the server may carry (its max_payload): split it into smaller tasks, or raise max_payload in the server's configuration`,
          ),
        );
        return;
      }
      const half = count >> 1;
      this.#send(sliceBatch(batch, 0, half));
      this.#send(sliceBatch(batch, half, count));
      return;
    }
    batch.tasks = [];
    batch.settled = new Uint8Array(count);
    batch.left = count;
    this.#batches.set(batch.from, batch);
    this.#publish(bytes, `b${batch.from}`, 0);
  }

  /**
   * Publishes a batch to the stage's input until the server has stored it:
   * after a failure (the server restarts, the stream is full) it tries
   * again; the message id makes a repeat that was stored after all a
   * duplicate, which the server drops.
   */
  #publish(bytes: Uint8Array, msgID: string, attempt: number): void {
    const { inSubject } = this.#config.spec;
    this.#js!.publish(inSubject, bytes, { msgID, timeout: 5_000 }).then(
      undefined,
      () => {
        setTimeout(
          () => this.#publish(bytes, msgID, attempt + 1),
          Math.min(2_000, 25 * 2 ** attempt),
        );
      },
    );
  }

  /** Reads the hosts' answers for as long as the worker runs. */
  async #readAnswers(): Promise<void> {
    const { stream } = this.#config.spec;
    for (let attempt = 0;; attempt++) {
      try {
        const consumer = await this.#js!.consumers.get(stream, "bridge");
        const messages = await consumer.consume({ max_messages: 256 });
        for await (const message of messages) {
          attempt = 0;
          try {
            this.#answer(message.data);
          } finally {
            message.ack();
          }
        }
      } catch (error) {
        // 10059: the stream is gone, so the run has ended.
        if (apiCode(error) === 10059) return;
      }
      await new Promise((resolve) =>
        setTimeout(resolve, Math.min(2_000, 50 * 2 ** attempt))
      );
    }
  }

  /** Settles the tasks an answer covers (each once: a repeat is dropped). */
  #answer(bytes: Uint8Array): void {
    const message = decodeMessage(this.#decoder, bytes) as unknown[];
    if (message[0] === REFUSED) {
      return this.#refuse(message[1] as string, message[2] as string);
    }
    const [, from, results, extras, host, worker] = message as [
      number,
      number,
      unknown[],
      Extra[] | null,
      string,
      number,
    ];
    const batch = this.#batches.get(from);
    let extra = 0;
    for (let i = 0; i < results.length; i++) {
      // Most answers cover one whole batch; a redelivered batch is split
      // into single tasks, each answered on its own.
      const owner = batch !== undefined && i < batch.settled.length
        ? batch
        : this.#batchOf(from + i);
      if (owner === undefined) continue;
      const index = from + i - owner.from;
      if (owner.settled[index] === 1) continue;
      owner.settled[index] = 1;
      if (extras !== null && extra < extras.length && extras[extra]![0] === i) {
        const [, kind, payload] = extras[extra++]!;
        if (kind === FAILED) {
          owner.rejects[index]!(
            {
              mpipeRemote: { host, worker, what: undefined },
              error: payload,
            } satisfies RemoteFailure,
          );
        } else if (kind === MANY) {
          owner.resolves[index]!(this.#many(owner.slots[index], payload));
        }
      } else owner.resolves[index]!(results[i]);
      if (--owner.left === 0) this.#batches.delete(owner.from);
    }
  }

  /**
   * Puts all but the last of a task's several results through the runtime,
   * and returns the last, which the task's Promise resolves with.
   */
  #many(slot: unknown, payload: unknown): unknown {
    const results = payload as unknown[];
    this.#putResultTo ??= (globalThis as Record<symbol, unknown>)[
      Symbol.for("mpipe.putResultTo")
    ] as (slot: unknown, result: unknown) => void;
    for (let i = 0; i < results.length - 1; i++) {
      this.#putResultTo(slot, results[i]);
    }
    return results.length === 0 ? null : results[results.length - 1];
  }

  /** The sent batch that holds task `task`, if it is not settled. */
  #batchOf(task: number): Batch | undefined {
    for (const batch of this.#batches.values()) {
      if (task >= batch.from && task < batch.from + batch.settled.length) {
        return batch;
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
    const pending = [...this.#batches.values()];
    if (this.#open !== null) pending.push(this.#open);
    this.#batches.clear();
    this.#open = null;
    for (const batch of pending) {
      for (let i = 0; i < batch.rejects.length; i++) {
        if (batch.settled[i] !== 1) batch.rejects[i]!(this.#refusal);
      }
    }
  }
}

/** Tasks [start, end) of an unsent batch, as a batch of their own. */
function sliceBatch(batch: Batch, start: number, end: number): Batch {
  return {
    from: batch.from + start,
    tasks: batch.tasks.slice(start, end),
    resolves: batch.resolves.slice(start, end),
    rejects: batch.rejects.slice(start, end),
    slots: batch.slots.slice(start, end),
    settled: new Uint8Array(0),
    left: 0,
  };
}
