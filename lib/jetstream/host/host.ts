/**
 * A worker host: a process that serves the remote stages of every pipeline
 * on a JetStream cluster, on a local pipeline of its own.
 *
 * - It watches the stream of stage announcements; for each stage it may run
 *   (see `--trust`, `--allow-source`, `--allow-target`) it pulls batches
 *   from the stage's durable consumer `hosts`, which it shares with the
 *   other hosts. A host that trusts coordinators' keys takes only
 *   announcements signed by one of them, issued less than `ANNOUNCE_TTL_MS`
 *   ago; it stops serving a stage not announced again for that long.
 * - Each batch is one task of its local pipeline, whose workers
 *   (`host_worker.ts`) run the stage's target on every task of the batch;
 *   the answer is published to the stage's output, and only once the server
 *   has stored it is the batch acked.
 * - While it holds a batch it tells the server so (`working()`), every
 *   third of the stage's `ackWait`: only a host that is lost lets its
 *   batches go to others.
 * - A batch delivered again (its host was lost) is split into single tasks,
 *   each delivered on its own; a single task delivered again runs alone on
 *   its host, so that a task that kills its host takes no other with it,
 *   and fails once it has done so `maxAttempts` times (see `#isolate`). A
 *   task whose worker is lost (it called `Deno.exit()`) fails at once.
 * - A batch held longer than its stage's `taskTimeout` per task is let go
 *   (see `#timedOut`): answered with the timeout, or split, and the local
 *   pipeline that runs it is replaced.
 * - A stage that it may not run is refused: the refusal answers the first
 *   batch it takes of the stage (echoing the batch's token, as answers do),
 *   and the pipeline fails with it.
 *
 * @module
 */

import { UnorderedStage } from "../../stage/stage.ts";
import { Pipeline } from "../../pipeline.ts";
import type { StageError } from "../../errors.ts";
import { checkOptionNames } from "../../checks.ts";
import { ensureStagesStream } from "../coordinator/cluster.ts";
import type { HostResult, HostStage, HostTask } from "./host_worker.ts";
import {
  DeliverPolicy,
  headers,
  jetstream,
  type JetStreamClient,
  type JetStreamManager,
  jetstreamManager,
  type JsMsg,
  type NatsConnection,
} from "../connection.ts";
import {
  ANNOUNCE_TTL_MS,
  apiCode,
  batchMessage,
  bodyLimit,
  checkConnectionOptions,
  type ConnectionOptions,
  connectNats,
  Decoder,
  Encoder,
  failedAnswer,
  importPublicKey,
  permanent,
  PROTOCOL,
  readAnnouncement,
  readBatch,
  refusalMessage,
  splitAnswer,
  stageNames,
  STAGES_STREAM,
  STAGES_SUBJECTS,
  type StageSpec,
} from "../protocol.ts";

/**
 * The options of `WorkerHost.start`: the connection, and what the host runs.
 *
 * @example A host that imports module targets from one place only
 * ```ts ignore
 * import { WorkerHost, type WorkerHostOptions } from "@mpipe/mpipe/jetstream";
 *
 * const options: WorkerHostOptions = {
 *   servers: "127.0.0.1:4222",
 *   workers: 2,
 *   allowTargets: ["https://code.example.com/tasks/"],
 *   hostName: "scorer-1",
 * };
 * await using host = await WorkerHost.start(options);
 * ```
 */
export interface WorkerHostOptions extends ConnectionOptions {
  /**
   * The most Web Workers the host runs, shared by every stage it serves.
   * @default {navigator.hardwareConcurrency}
   */
  workers?: number;
  /**
   * The public keys of the coordinators the host trusts (as
   * `JetStreamCluster.generateKeys()` or `host.ts --new-keys` makes them):
   * the host then takes only stage announcements signed with one of their
   * signing keys, and ignores (and reports) every other. Without it, the
   * host takes unsigned announcements, and runs only module targets under
   * `allowTargets`.
   * @default {[]: no coordinator is trusted}
   */
  trust?: string[];
  /**
   * Run function and class targets, which travel as source text and run
   * with the host's permissions, from trusted coordinators (it needs
   * `trust`). Without it the host refuses them.
   * @default {false}
   */
  allowSource?: boolean;
  /**
   * URL prefixes of the module targets the host may import
   * (`https://example.com/tasks/`, `file:///srv/shared/`); others are
   * refused. A target is under a prefix when its URL, normalized (`..` and
   * `.` resolved), has the prefix's scheme, host and port, and its path
   * starts with the prefix's path on a segment boundary.
   * @default {[]: no module target}
   */
  allowTargets?: string[];
  /**
   * The host's name in errors.
   * @default {"<hostname>:<pid>"}
   */
  hostName?: string;
}

/** What a host runs, with the defaults filled in. */
type HostSettings =
  & Required<
    Pick<WorkerHostOptions, "workers" | "allowSource" | "allowTargets">
  >
  & {
    /** The trusted coordinators' public keys. */
    trust: CryptoKey[];
  };

/** The header of a single task split from a batch whose host was lost. */
const LOST = "MPipe-Lost";

/** The host's local worker module. */
const HOST_WORKER = new URL("./host_worker.ts", import.meta.url);

/** A batch the host holds: taken from a stage's consumer, not yet acked. */
interface Held {
  message: JsMsg;
  server: StageServer;
  /** When it was taken (performance.now()). */
  since: number;
  /** Called once it is acked, answered or given back. */
  done: (() => void) | null;
  /** The timer of its taskTimeout (see `#timedOut`), if its stage has one. */
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** One run of the host's local pipeline, and the batches in it, by id (its task number). */
interface LocalRun {
  pipe: Pipeline<HostTask, HostResult>;
  held: Map<number, Held>;
  next: number;
  /** Set once a task in it timed out: it takes no more batches (see `#retire`). */
  retired: boolean;
}

/**
 * A process's service to a JetStream cluster: it runs the remote stages of
 * any pipeline on the cluster, up to `workers` Web Workers at once. Hosts
 * may join and leave at any time. `deno run --allow-net=SERVER
 * jsr:@mpipe/mpipe/host` starts one from the command line (see `host.ts`).
 *
 * @example Serve a cluster for a while (needs a server)
 * ```ts ignore
 * import { WorkerHost } from "@mpipe/mpipe/jetstream";
 * import assert from "node:assert/strict";
 *
 * await using host = await WorkerHost.start({
 *   servers: "127.0.0.1:4222",
 *   workers: 2,
 *   trust: [Deno.env.get("MPIPE_TRUST")!],
 *   allowSource: true,
 * });
 * assert.match(host.name, /:/);
 * ```
 */
export class WorkerHost implements AsyncDisposable {
  /** The host's name, as errors give it. */
  readonly name: string;
  readonly #options: HostSettings;
  readonly #nc: NatsConnection;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #encoder = new Encoder();
  readonly #decoder = new Decoder();
  /** The stages seen, by `<run>/<index>`: served, or refused (see `StageServer.refusal`). */
  readonly #stages = new Map<string, StageServer>();
  #local: LocalRun;
  #closing = false;
  /** Suspects (tasks delivered again) run one at a time, each alone (see #isolate). */
  #isolation: Promise<void> = Promise.resolve();
  #suspects = 0;
  /** Set while suspects wait or run: the host takes nothing else. */
  #paused: { promise: Promise<void>; resolve: () => void } | null = null;
  /** Batches taken while paused, which wait (and are said to be alive). */
  readonly #waiting = new Map<JsMsg, StageServer>();
  #heldChanged: { promise: Promise<void>; resolve: () => void } | null = null;
  readonly #stopped = Promise.withResolvers<void>();
  readonly #watching: Promise<void>;

  private constructor(
    name: string,
    options: HostSettings,
    nc: NatsConnection,
    jsm: JetStreamManager,
  ) {
    this.name = name;
    this.#options = options;
    this.#nc = nc;
    this.#jsm = jsm;
    this.#js = jetstream(nc);
    this.#local = this.#startLocal();
    this.#watching = this.#watch();
    this.#expiry = setInterval(() => this.#expire(), 1_000);
  }

  /** The timer of `#expire`. */
  readonly #expiry: ReturnType<typeof setInterval>;

  /**
   * Connects to the cluster and starts serving it.
   *
   * @param options The servers, credentials and TLS, the worker budget, and
   * which targets the host may run.
   * @returns The running host.
   * @throws {TypeError} If an option is of the wrong type, a key in
   * `trust` is not a public key, or `allowSource` is given without `trust`.
   * @throws {RangeError} If `workers` is not a positive integer.
   *
   * @example A host of two workers that runs source targets (needs a server)
   * ```ts ignore
   * import { WorkerHost } from "@mpipe/mpipe/jetstream";
   *
   * const host = await WorkerHost.start({
   *   servers: "127.0.0.1:4222",
   *   workers: 2,
   *   trust: [Deno.env.get("MPIPE_TRUST")!],
   *   allowSource: true,
   * });
   * await host.close();
   * ```
   */
  static async start(options: WorkerHostOptions): Promise<WorkerHost> {
    const checked = checkHostOptions(options);
    const trust = await Promise.all(
      (checked.trust ?? []).map((key, i) =>
        importPublicKey(key, `WorkerHost.start: 'options.trust[${i}]'`)
      ),
    );
    const name = checked.hostName ?? defaultHostName();
    const nc = await connectNats(checked, `mpipe host ${name}`);
    try {
      const jsm = await jetstreamManager(nc);
      await ensureStagesStream(jsm);
      return new WorkerHost(
        name,
        {
          workers: checked.workers ?? navigator.hardwareConcurrency,
          allowSource: checked.allowSource ?? false,
          allowTargets: checked.allowTargets ?? [],
          trust,
        },
        nc,
        jsm,
      );
    } catch (error) {
      await nc.close();
      throw error;
    }
  }

  /** How many stages the host serves now. */
  get serving(): number {
    let count = 0;
    for (const server of this.#stages.values()) {
      if (server.live && server.refusal === null) count++;
    }
    return count;
  }

  /**
   * Stops taking tasks, finishes the batches it holds (their answers are
   * published and acked), and disconnects.
   *
   * @returns A Promise that settles once the host has stopped.
   */
  async close(): Promise<void> {
    if (this.#closing) return await this.#stopped.promise;
    this.#closing = true;
    clearInterval(this.#expiry);
    this.#stopWatching();
    for (const server of this.#stages.values()) server.stop();
    const local = this.#local;
    // Wait for the batches in hand, then end the local pipeline.
    for (let i = 0; i < 600 && local.held.size > 0; i++) {
      await delay(50);
    }
    await local.pipe.close().catch(() => {});
    await local.pipe.done.catch(() => {});
    await this.#watching.catch(() => {});
    await this.#nc.close();
    this.#stopped.resolve();
  }

  /**
   * Closes the host, like `close()`.
   *
   * @returns A Promise that settles once the host has stopped.
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** Starts the local pipeline and the loop that publishes its answers. */
  #startLocal(): LocalRun {
    const local: LocalRun = {
      pipe: new Pipeline<HostTask, HostResult>(
        // Unordered: a batch may overtake a slow one; the coordinator keeps
        // each stage's order itself.
        new UnorderedStage<HostTask, HostResult>(
          HOST_WORKER,
          this.#options.workers,
          {
            name: "host",
            restart: true,
            onError: (error) => this.#lost(local, error),
          },
        ),
        { ringBytes: 1 << 22, spin: 0 },
      ),
      held: new Map(),
      next: 0,
      retired: false,
    };
    this.#answerLoop(local);
    return local;
  }

  /**
   * A task of batch `id` ran past its stage's taskTimeout (its batch past
   * taskTimeout × its tasks): the host lets it go (no more `working()` for
   * it), answers it with the timeout (a batch of several is split, so that
   * the stuck task times out alone and the others run again), and replaces
   * its workers: later batches go to a new local pipeline, and the old one
   * is ended once its other batches are done.
   */
  #timedOut(local: LocalRun, id: number): void {
    const held = local.held.get(id);
    if (held === undefined) return;
    const { message, server } = held;
    const { from, count } = readBatch(message.data);
    const limit = server.spec.taskTimeout;
    this.#release(local, id);
    this.#retire(local);
    if (count > 1) {
      this.#split(server, message);
      return;
    }
    this.#fail(
      server,
      message,
      from,
      new DOMException(
        `task ${from} ran longer than its taskTimeout of ${limit} ms on host ${this.name}: the host let it go and replaced its worker`,
        "TimeoutError",
      ),
      undefined,
    );
  }

  /**
   * Sends later batches to a new local pipeline, moves the batches `local`
   * holds there (they run again: those queued behind a stuck worker would
   * wait for ever), and ends `local`.
   */
  #retire(local: LocalRun): void {
    if (local.retired) return;
    local.retired = true;
    if (this.#local === local && !this.#closing) {
      this.#local = this.#startLocal();
    }
    for (const [id, held] of [...local.held]) {
      local.held.delete(id);
      clearTimeout(held.timer);
      if (this.#closing) {
        held.message.nak();
        held.server.release(held.since);
        held.done?.();
      } else this.#put(this.#local, held);
    }
    // A busy loop goes on in its thread (Worker.terminate() cannot stop
    // it), but touches nothing of the host.
    local.pipe.terminate();
    local.pipe.done.catch(() => {});
  }

  /** Publishes each answer of the local pipeline, then acks its batch. */
  async #answerLoop(local: LocalRun): Promise<void> {
    try {
      for await (const [id, answer] of local.pipe) {
        const held = local.held.get(id);
        if (held === undefined) continue;
        this.#answer(local, id, held, answer);
      }
    } catch (error) {
      // The local pipeline failed (its workers were lost too often): start
      // another, and give the batches it held back to the cluster.
      if (this.#closing || local.retired) return;
      console.error(
        `mpipe host ${this.name}: its workers failed (${
          error instanceof Error ? error.message : error
        }); it starts new ones and gives back the ${local.held.size} batch(es) it held`,
      );
      for (const [id, { message }] of [...local.held]) {
        message.nak();
        this.#release(local, id);
      }
      this.#local = this.#startLocal();
    }
  }

  /** Publishes `answer` for the batch `held` (id `id`), then acks the batch. */
  #answer(local: LocalRun, id: number, held: Held, answer: Uint8Array): void {
    const { message, server } = held;
    const max = bodyLimit(this.#nc.info?.max_payload ?? 1 << 20);
    const parts = splitAnswer(this.#encoder, answer, max);
    const seq = message.info.streamSequence;
    Promise.all(
      parts.map((part, i) => this.#publish(server, part, `a${seq}.${i}`)),
    ).then(
      () => {
        message.ack();
        this.#release(local, id);
      },
      (error) => {
        if (!permanent(error)) return this.#release(local, id); // The stage is gone.
        // The server refuses the answer for good: its tasks fail with why.
        const { from } = readBatch(message.data);
        this.#fail(server, message, from, error, undefined).finally(() =>
          this.#release(local, id)
        );
      },
    );
  }

  /** Lets go of batch `id` of `local`: it was acked, answered or given back. */
  #release(local: LocalRun, id: number): void {
    const held = local.held.get(id);
    if (held === undefined) return;
    local.held.delete(id);
    clearTimeout(held.timer);
    held.server.release(held.since);
    held.done?.();
    const changed = this.#heldChanged;
    this.#heldChanged = null;
    changed?.resolve();
  }

  /**
   * Publishes to a stage's output until the server has stored it, through
   * reconnections; rejects once the stage's stream is gone, or at once on
   * a permanent error (see `permanent`).
   */
  async #publish(
    server: StageServer,
    bytes: Uint8Array,
    msgID: string,
  ): Promise<void> {
    for (let attempt = 0;; attempt++) {
      try {
        await this.#js.publish(server.spec.outSubject, bytes, {
          msgID,
          timeout: 5_000,
        });
        return;
      } catch (error) {
        if (permanent(error)) throw error;
        if (await this.#gone(server.spec.stream, error)) throw error;
      }
      await delay(Math.min(2_000, 25 * 2 ** attempt));
    }
  }

  /** Whether a failed request failed because the stream no longer exists. */
  async #gone(stream: string, error: unknown): Promise<boolean> {
    if (apiCode(error) === 10059) return true;
    try {
      await this.#jsm.streams.info(stream);
      return false;
    } catch (info) {
      return apiCode(info) === 10059;
    }
  }

  /**
   * Takes a batch from a stage's consumer into the local pipeline. A batch
   * delivered again (its host was lost) is split into single tasks; a single
   * task delivered again runs alone (see `#isolate`).
   */
  async #take(server: StageServer, message: JsMsg): Promise<void> {
    if (server.refusal !== null) return await this.#refuse(server, message);
    const deliveries = message.info.deliveryCount;
    // Only a single task may carry LOST (parsing headers costs, per batch).
    const data = message.data;
    const single = data[4] === 1 && data[5] === 0 && data[6] === 0 &&
      data[7] === 0;
    if (deliveries === 1 && !(single && message.headers?.has(LOST))) {
      // Nothing else runs while a suspect does (see #isolate).
      while (this.#paused !== null) {
        this.#waiting.set(message, server);
        await this.#paused.promise;
      }
      this.#waiting.delete(message);
      return await this.#hold(server, message, null);
    }
    const { from, count } = readBatch(message.data);
    if (count > 1) return await this.#split(server, message);
    if (deliveries >= server.spec.maxDeliver) {
      // The consumer's last delivery: answer it, or it stays for ever.
      return await this.#fail(
        server,
        message,
        from,
        new Error(
          `the task was delivered ${deliveries} times without an answer: it is not run again`,
        ),
        undefined,
      );
    }
    return await this.#isolate(server, message, from);
  }

  /** Puts a batch into the local pipeline; `done` is called once it is let go. */
  async #hold(
    server: StageServer,
    message: JsMsg,
    done: (() => void) | null,
  ): Promise<void> {
    server.hold();
    await this.#put(this.#local, {
      message,
      server,
      since: performance.now(),
      done,
      timer: undefined,
    });
  }

  /** Puts a held batch into the local pipeline `local`, with the timer of its stage's taskTimeout. */
  async #put(local: LocalRun, held: Held): Promise<void> {
    const id = local.next++;
    const { message, server } = held;
    const limit = server.spec.taskTimeout;
    if (limit > 0) {
      held.timer = setTimeout(
        () => this.#timedOut(local, id),
        limit * readBatch(message.data).count,
      );
    }
    local.held.set(id, held);
    await local.pipe.put([id, server.stage, message.data]).catch(() => {
      // The local pipeline failed, or was retired; #answerLoop or #retire
      // gives its batches back or moves them.
    });
  }

  /**
   * Runs task `task`, whose host was lost (it was delivered again, or
   * split from a batch delivered again), alone on this host: the host takes
   * nothing else and waits until what it holds is done; suspects take
   * turns. Before the run, a note on the subject `<aloneSubject>.<task>`
   * counts it, and after it the notes are removed: notes left say how many
   * times the task killed a host it had to itself. With the loss that made
   * it a suspect, those are the host losses it cost; at `maxAttempts` it
   * fails without running again. Tasks that only shared a host with it are
   * counted by no note, and succeed.
   */
  #isolate(server: StageServer, message: JsMsg, task: number): Promise<void> {
    this.#suspects++;
    this.#paused ??= Promise.withResolvers<void>();
    this.#waiting.set(message, server);
    const turn = this.#isolation.then(async () => {
      try {
        while (this.#local.held.size > 0) {
          this.#heldChanged ??= Promise.withResolvers<void>();
          await this.#heldChanged.promise;
        }
        this.#waiting.delete(message);
        const spec = server.spec;
        const subject = `${spec.aloneSubject}.${task}`;
        const note = await this.#jsm.streams.getMessage(spec.stream, {
          last_by_subj: subject,
        }).catch(() => null);
        const alone = note === null ? 0 : Number(note.string());
        const runs = 1 + alone;
        if (runs >= spec.maxAttempts) {
          await this.#fail(
            server,
            message,
            task,
            new Error(
              `the task lost its host ${runs} times (killed, crashed or silent past ackWait; ${alone} of them while it ran alone there): it is not run again`,
            ),
            undefined,
          );
        } else {
          await this.#js.publish(
            subject,
            new TextEncoder().encode(`${alone + 1}`),
          );
          const ran = Promise.withResolvers<void>();
          await this.#hold(server, message, ran.resolve);
          await ran.promise;
        }
        await this.#jsm.streams.purge(spec.stream, { filter: subject })
          .catch(() => {});
      } finally {
        this.#waiting.delete(message);
        if (--this.#suspects === 0) {
          const paused = this.#paused;
          this.#paused = null;
          paused?.resolve();
        }
      }
    });
    this.#isolation = turn.catch(() => {});
    return turn;
  }

  /**
   * Refuses a stage in answer to a batch of it (so that the refusal echoes
   * the batch's token, as only a host it was delivered to can), then acks
   * the batch and stops serving the stage: the refusal fails its pipeline.
   */
  async #refuse(server: StageServer, message: JsMsg): Promise<void> {
    server.stop();
    try {
      await this.#publish(
        server,
        refusalMessage(
          this.#encoder,
          message.data,
          this.name,
          server.refusal!,
        ),
        `r${this.name}`,
      );
      message.ack();
    } catch { /* The stage is gone. */ }
  }

  /** Puts each task of a batch back as a message of its own (with the batch's token), then acks the batch. */
  async #split(server: StageServer, message: JsMsg): Promise<void> {
    const { from, count, token, reader } = readBatch(message.data);
    const singles: Uint8Array[] = [];
    for (let i = 0; i < count; i++) {
      const start = reader.at;
      reader.frame();
      singles.push(
        batchMessage(from + i, 1, token, message.data, start, reader.at),
      );
    }
    try {
      // Each single is a suspect from its first delivery (see #isolate).
      const lost = headers();
      lost.set(LOST, "1");
      await Promise.all(singles.map((single, i) =>
        this.#js.publish(
          server.spec.inSubject,
          single,
          // A batch split twice (by two hosts) gives each task once.
          { msgID: `t${from + i}`, timeout: 5_000, headers: lost },
        )
      ));
      message.ack();
    } catch {
      message.nak(1_000);
    }
  }

  /** Answers every task of a batch with `error`, then acks it. */
  async #fail(
    server: StageServer,
    message: JsMsg,
    from: number,
    error: unknown,
    worker: number | undefined,
  ): Promise<void> {
    const { count, token } = readBatch(message.data);
    const answer = failedAnswer(
      this.#encoder,
      from,
      count,
      token,
      this.name,
      worker ?? -1,
      error,
    );
    try {
      await this.#publish(server, answer, `f${message.info.streamSequence}`);
      message.ack();
    } catch { /* The stage is gone. */ }
  }

  /**
   * A worker of the local pipeline was lost with a batch (it called
   * `close()` or `Deno.exit()`, or threw outside its task): a batch of one
   * task fails with the loss; a larger batch is split, so that the task
   * that did it fails alone.
   */
  #lost(local: LocalRun, error: StageError): void {
    const id = error.task;
    const held = id === undefined ? undefined : local.held.get(id);
    if (held === undefined) return;
    const { message, server } = held;
    const { from, count } = readBatch(message.data);
    const done = count > 1 ? this.#split(server, message) : this.#fail(
      server,
      message,
      from,
      new Error(
        `its worker was lost: ${
          /the worker was lost: (.*?)(?:; it held|$)/.exec(error.message)
            ?.[1] ?? error.message
        }`,
        { cause: error.cause },
      ),
      error.worker,
    );
    done.finally(() => this.#release(local, id!));
  }

  /** Watches the stage announcements, and serves or refuses each new stage. */
  async #watch(): Promise<void> {
    while (!this.#closing) {
      try {
        const consumer = await this.#js.consumers.get(STAGES_STREAM, {
          filter_subjects: STAGES_SUBJECTS,
          deliver_policy: DeliverPolicy.LastPerSubject,
        });
        const messages = await consumer.consume();
        this.#stopWatching = () => messages.stop();
        // close() may have come while the consumer was being made.
        if (this.#closing) messages.stop();
        for await (const message of messages) {
          if (this.#closing) break;
          await this.#announced(message.subject, message.data);
        }
      } catch {
        // Reconnecting, or the server restarted (maybe without its store:
        // then make the stream of announcements again) : watch again.
        await ensureStagesStream(this.#jsm).catch(() => {});
      }
      if (!this.#closing) await delay(250);
    }
  }

  #stopWatching: () => void = () => {};

  /** What the stage servers use of the host. */
  readonly #port: HostPort = {
    js: () => this.#js,
    take: (server, message) => this.#take(server, message),
    gone: (stream, error) => this.#gone(stream, error),
    heldBy: (server) => this.#heldBy(server),
    // Its run has ended: forget it (its announcement was withdrawn first).
    ended: (server) => {
      if (this.#stages.get(server.stage.key) === server) {
        this.#stages.delete(server.stage.key);
      }
    },
  };

  /**
   * A stage was announced (again): serve it, or refuse it. A host that
   * trusts coordinators' keys ignores (and reports) an announcement that
   * none of them signed, or signed longer than `ANNOUNCE_TTL_MS` ago (a
   * replay), or made for another subject.
   */
  async #announced(subject: string, bytes: Uint8Array): Promise<void> {
    const read = await readAnnouncement(
      this.#decoder,
      bytes,
      this.#options.trust,
    );
    const spec = read?.spec;
    const why = read === null || !isSpec(spec)
      ? "it is not a stage announcement"
      : stageNames(spec.run, spec.index).announcement !== subject
      ? `it names another stage than its subject ${subject}`
      : this.#options.trust.length > 0 && !read.signed
      ? "no coordinator this host trusts (--trust) signed it"
      : read.signed && Math.abs(Date.now() - spec.issued) > ANNOUNCE_TTL_MS
      ? `it was issued ${
        Math.round((Date.now() - spec.issued) / 1000)
      } s ago (a replay, or clocks more than ${ANNOUNCE_TTL_MS / 1000} s apart)`
      : null;
    if (why !== null) return this.#ignore(subject, why);
    const key = `${spec!.run}/${spec!.index}`;
    const known = this.#stages.get(key);
    if (known !== undefined) {
      known.seen = performance.now();
      return;
    }
    // The names are the run's own, whatever else the spec says.
    const names = stageNames(spec!.run, spec!.index);
    const target = spec!.target;
    const checked: StageSpec = {
      ...spec!,
      stream: names.stream,
      inSubject: names.inSubject,
      outSubject: names.outSubject,
      aloneSubject: names.aloneSubject,
      // A module is imported by the URL that was checked, normalized.
      target: target.kind === "module" && URL.canParse(target.specifier)
        ? { ...target, specifier: new URL(target.specifier).href }
        : target,
    };
    const server = new StageServer(
      this.#port,
      checked,
      {
        key,
        name: checked.name,
        target: checked.target,
        args: checked.args,
        concurrency: checked.concurrency,
        host: this.name,
      },
      this.#options.workers,
      this.#refusal(checked, read!.signed),
    );
    this.#stages.set(key, server);
    server.serve();
  }

  /** Announcements ignored (see `#announced`), and when they were last reported. */
  #ignored = 0;
  #ignoredReported = 0;

  /** Counts an ignored announcement, and reports the count on stderr at most every 10 s. */
  #ignore(subject: string, why: string): void {
    this.#ignored++;
    const now = performance.now();
    if (this.#ignoredReported !== 0 && now - this.#ignoredReported < 10_000) {
      return;
    }
    this.#ignoredReported = now;
    console.warn(
      `mpipe host ${this.name}: ignored ${this.#ignored} stage announcement(s) so far; the last, on ${subject}, because ${why}`,
    );
  }

  /** How many stage announcements the host ignored: unsigned or forged (with `trust`), replayed, or malformed. */
  get ignored(): number {
    return this.#ignored;
  }

  /** Stops serving the stages not announced again for `ANNOUNCE_TTL_MS`: their coordinators are gone. */
  #expire(): void {
    const now = performance.now();
    for (const [key, server] of this.#stages) {
      if (now - server.seen > ANNOUNCE_TTL_MS) {
        server.stop();
        this.#stages.delete(key);
      }
    }
  }

  /** Why the host may not run `spec`'s stage, or null if it may; `signed` if a trusted coordinator announced it. */
  #refusal(spec: StageSpec, signed: boolean): string | null {
    if (spec.protocol !== PROTOCOL) {
      return `the stage speaks protocol ${spec.protocol}, the host ${PROTOCOL}: run the same version of @mpipe/mpipe on the coordinator and the hosts`;
    }
    const target = spec.target;
    if (target.kind === "source") {
      if (!signed) {
        return "it is a function or class target, sent as source text, and this host runs those only from coordinators it trusts: give the coordinator a signingKey, and start the host with --trust PUBLIC_KEY --allow-source";
      }
      return this.#options.allowSource ? null : (
        "it is a function or class target, sent as source text, and this host runs those only when started with --allow-source (allowSource: true)"
      );
    }
    const allowed = this.#options.allowTargets;
    if (allowed.some((prefix) => isUnder(target.specifier, prefix))) {
      return null;
    }
    return `its module target ${target.specifier} is not under any URL prefix this host may import (${
      allowed.length === 0
        ? "none: start it with --allow-target PREFIX"
        : allowed.join(", ")
    })`;
  }

  /** The batches a stage holds, or waits with, to say they are being worked on. */
  #heldBy(server: StageServer): JsMsg[] {
    const messages = [];
    for (const held of this.#local.held.values()) {
      if (held.server === server) messages.push(held.message);
    }
    for (const [message, holder] of this.#waiting) {
      if (holder === server) messages.push(message);
    }
    return messages;
  }
}

/** What a stage server uses of its host. */
interface HostPort {
  js(): JetStreamClient;
  /** Takes a batch into the host's local pipeline (awaits room there). */
  take(server: StageServer, message: JsMsg): Promise<void>;
  /** Whether a failed request failed because the stream is gone. */
  gone(stream: string, error: unknown): Promise<boolean>;
  /** The batches the server holds, to say they are being worked on. */
  heldBy(server: StageServer): JsMsg[];
  /** The server's stage is gone: its run has ended. */
  ended(server: StageServer): void;
}

/**
 * A stage the host serves: pulls its batches while it has room for them.
 *
 * Room is counted in batches held (taken, not yet acked): enough to keep
 * the host's workers fed for about 20 ms of batches (as timed so far), and
 * at least two per worker. So a host of fast batches keeps many in hand,
 * and a host of slow ones no more than its workers can soon start, leaving
 * the rest to other hosts.
 */
class StageServer {
  readonly spec: StageSpec;
  readonly stage: HostStage;
  /** Why the host refuses the stage (it answers its first batch so), or null. */
  readonly refusal: string | null;
  /** When the stage was last announced (performance.now()). */
  seen = performance.now();
  readonly #host: HostPort;
  readonly #workers: number;
  /** Batches held (taken, not yet acked). */
  #held = 0;
  /** Milliseconds a batch took from its take to its ack, on average lately. */
  #batchMs = 0;
  #room: { promise: Promise<void>; resolve: () => void } | null = null;
  #stopped = false;
  #stopPulling: () => void = () => {};
  #heartbeat: ReturnType<typeof setInterval> | undefined;

  constructor(
    host: HostPort,
    spec: StageSpec,
    stage: HostStage,
    workers: number,
    refusal: string | null,
  ) {
    this.#host = host;
    this.spec = spec;
    this.stage = stage;
    this.#workers = workers;
    this.refusal = refusal;
  }

  /** Whether it still serves the stage. */
  get live(): boolean {
    return !this.#stopped;
  }

  /** How many batches it may hold now. */
  get #limit(): number {
    const least = 2 * this.#workers + 2;
    if (this.#batchMs === 0) return least;
    return Math.max(
      least,
      Math.min(256, Math.ceil((this.#workers * 20) / this.#batchMs)),
    );
  }

  /** A batch was taken. */
  hold(): void {
    this.#held++;
  }

  /** A batch taken `since` (performance.now()) was acked, answered or given back. */
  release(since: number): void {
    this.#held--;
    const ms = performance.now() - since;
    this.#batchMs = this.#batchMs === 0 ? ms : 0.9 * this.#batchMs + 0.1 * ms;
    const room = this.#room;
    this.#room = null;
    room?.resolve();
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#heartbeat);
    this.#stopPulling();
    const room = this.#room;
    this.#room = null;
    room?.resolve();
  }

  /**
   * Pulls batches, while it has room for them, until the stage's stream is
   * gone (its run ended) or the host closes. The client asks for the next
   * batches only as this loop takes the previous ones (`consume()` queues
   * its pull requests with the messages), so a paused loop pulls no more.
   */
  async serve(): Promise<void> {
    const host = this.#host;
    // Batches in hand are alive: say so before their ackWait runs out.
    this.#heartbeat = setInterval(() => {
      for (const message of host.heldBy(this)) message.working();
    }, Math.max(100, this.spec.ackWait / 3));
    for (let attempt = 0; !this.#stopped; attempt++) {
      try {
        const consumer = await host.js().consumers.get(
          this.spec.stream,
          "hosts",
        );
        const messages = await consumer.consume({
          max_messages: Math.max(4, 2 * this.#workers),
          abort_on_missing_resource: true,
        });
        this.#stopPulling = () => messages.stop();
        // stop() may have come while the consumer was being made.
        if (this.#stopped) messages.stop();
        for await (const message of messages) {
          attempt = 0;
          if (this.#stopped) {
            message.nak();
            continue;
          }
          await host.take(this, message);
          while (this.#held >= this.#limit && !this.#stopped) {
            this.#room ??= Promise.withResolvers<void>();
            await this.#room.promise;
          }
        }
        if (this.#stopped) break;
        if (await host.gone(this.spec.stream, undefined)) {
          host.ended(this);
          break;
        }
      } catch (error) {
        if (await host.gone(this.spec.stream, error)) {
          host.ended(this);
          break;
        }
      }
      await delay(Math.min(2_000, 50 * 2 ** attempt));
    }
    this.stop();
  }
}

function checkHostOptions(options: unknown): WorkerHostOptions {
  const checked = checkConnectionOptions(
    "WorkerHost.start",
    options,
  ) as WorkerHostOptions;
  const known = [
    "servers",
    "name",
    "user",
    "pass",
    "token",
    "credentials",
    "tls",
    "workers",
    "trust",
    "allowSource",
    "allowTargets",
    "hostName",
  ];
  checkOptionNames("WorkerHost.start", checked, known);
  const workers = checked.workers;
  if (
    workers !== undefined &&
    !(typeof workers === "number" && Number.isInteger(workers) && workers >= 1)
  ) {
    throw new RangeError(
      `WorkerHost.start: 'options.workers' must be a positive integer, got ${
        JSON.stringify(workers)
      }`,
    );
  }
  if (
    checked.allowSource !== undefined &&
    typeof checked.allowSource !== "boolean"
  ) {
    throw new TypeError(
      "WorkerHost.start: 'options.allowSource' must be a boolean",
    );
  }
  const trust = checked.trust;
  if (
    trust !== undefined &&
    !(Array.isArray(trust) && trust.every((t) => typeof t === "string"))
  ) {
    throw new TypeError(
      "WorkerHost.start: 'options.trust' must be an array of public keys (from JetStreamCluster.generateKeys())",
    );
  }
  if (checked.allowSource === true && (trust ?? []).length === 0) {
    throw new TypeError(
      "WorkerHost.start: 'options.allowSource' needs 'options.trust' (--trust PUBLIC_KEY): a host runs function and class targets only from coordinators whose signing key it trusts. Make a key pair with `deno run jsr:@mpipe/mpipe/host --new-keys`",
    );
  }
  const targets = checked.allowTargets;
  if (
    targets !== undefined &&
    !(Array.isArray(targets) &&
      targets.every((t) => typeof t === "string" && URL.canParse(t)))
  ) {
    throw new TypeError(
      `WorkerHost.start: 'options.allowTargets' must be an array of URL prefixes (https://example.com/tasks/), got ${
        JSON.stringify(targets)
      }`,
    );
  }
  if (
    checked.hostName !== undefined &&
    (typeof checked.hostName !== "string" || checked.hostName === "")
  ) {
    throw new TypeError(
      "WorkerHost.start: 'options.hostName' must be a non-empty string",
    );
  }
  return checked;
}

/**
 * Whether the module `specifier` is under the URL prefix `prefix`: both
 * normalized (`..` and `.` resolved, as the import will), with the same
 * scheme, host and port, and the target's path starting with the prefix's
 * path on a segment boundary (a prefix `file:///srv/a` admits
 * `file:///srv/a/x.ts`, not `file:///srv/ab.ts`).
 */
export function isUnder(specifier: string, prefix: string): boolean {
  let target: URL;
  let base: URL;
  try {
    target = new URL(specifier);
    base = new URL(prefix);
  } catch {
    return false;
  }
  if (
    target.protocol !== base.protocol || target.host !== base.host ||
    target.username !== base.username || target.password !== base.password
  ) {
    return false;
  }
  // An encoded slash or backslash is a separator to some loaders.
  if (/%2f|%5c/i.test(target.pathname)) return false;
  const path = base.pathname.endsWith("/")
    ? base.pathname
    : `${base.pathname}/`;
  return target.pathname.startsWith(path);
}

/** Whether `spec` has the shape of a stage's spec (an unsigned one may be anything). */
function isSpec(spec: unknown): spec is StageSpec {
  const s = spec as StageSpec;
  return typeof s === "object" && s !== null &&
    typeof s.run === "string" && /^[A-Za-z0-9]+$/.test(s.run) &&
    Number.isInteger(s.index) && s.index >= 0 &&
    typeof s.name === "string" && typeof s.issued === "number" &&
    typeof s.target === "object" && s.target !== null &&
    (s.target.kind === "source"
      ? typeof s.target.source === "string"
      : s.target.kind === "module" && typeof s.target.specifier === "string") &&
    Array.isArray(s.args) &&
    Number.isInteger(s.concurrency) && s.concurrency >= 1 &&
    typeof s.ackWait === "number" && s.ackWait >= 100 &&
    typeof s.taskTimeout === "number" && s.taskTimeout >= 0 &&
    Number.isInteger(s.maxAttempts) && s.maxAttempts >= 1 &&
    Number.isInteger(s.maxDeliver) && s.maxDeliver >= 1;
}

function defaultHostName(): string {
  let name = "host";
  try {
    // Only if granted: never a permission prompt.
    const { state } = Deno.permissions.querySync({
      name: "sys",
      kind: "hostname",
    });
    if (state === "granted") name = Deno.hostname();
  } catch { /* No --allow-sys=hostname. */ }
  return `${name}:${Deno.pid}`;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
