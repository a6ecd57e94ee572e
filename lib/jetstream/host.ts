/**
 * A worker host: a process that serves the remote stages of every pipeline
 * on a JetStream cluster, on a local pipeline of its own.
 *
 * - It watches the stream of stage announcements; for each stage it may run
 *   (see `--allow-source`, `--allow-target`) it pulls batches from the
 *   stage's durable consumer `hosts`, which it shares with the other hosts.
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
 * - A stage that it may not run is refused: the refusal goes to the stage's
 *   output, and the pipeline fails with it.
 *
 * @module
 */

import { UnorderedStage } from "../stage.ts";
import { Pipeline } from "../pipeline.ts";
import type { StageError } from "../errors.ts";
import { ensureStagesStream } from "./cluster.ts";
import type { HostResult, HostStage, HostTask } from "./host_worker.ts";
import {
  DeliverPolicy,
  jetstream,
  type JetStreamClient,
  type JetStreamManager,
  jetstreamManager,
  type JsMsg,
  type NatsConnection,
} from "./nats.ts";
import {
  apiCode,
  batchMessage,
  checkConnectionOptions,
  type ConnectionOptions,
  connectNats,
  decodeMessage,
  Decoder,
  Encoder,
  failedAnswer,
  PROTOCOL,
  readBatch,
  refusalMessage,
  splitAnswer,
  STAGES_STREAM,
  STAGES_SUBJECTS,
  type StageSpec,
} from "./protocol.ts";

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
   * Run function and class targets, which travel as source text and run
   * with the host's permissions. Without it the host refuses them.
   * @default {false}
   */
  allowSource?: boolean;
  /**
   * URL prefixes of the module targets the host may import
   * (`https://example.com/tasks/`, `file:///srv/shared/`); others are
   * refused.
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
type HostSettings = Required<
  Pick<WorkerHostOptions, "workers" | "allowSource" | "allowTargets">
>;

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
}

/** One run of the host's local pipeline, and the batches in it, by id (its task number). */
interface LocalRun {
  pipe: Pipeline<HostTask, HostResult>;
  held: Map<number, Held>;
  next: number;
}

/**
 * A process's service to a JetStream cluster: it runs the remote stages of
 * any pipeline on the cluster, up to `workers` Web Workers at once. Hosts
 * may join and leave at any time. `deno run -A jsr:@mpipe/mpipe/host` starts
 * one from the command line (see `host.ts`).
 *
 * @example Serve a cluster for a while (needs a server)
 * ```ts ignore
 * import { WorkerHost } from "@mpipe/mpipe/jetstream";
 * import assert from "node:assert/strict";
 *
 * await using host = await WorkerHost.start({
 *   servers: "127.0.0.1:4222",
 *   workers: 2,
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
  /** The stages seen, by `<run>/<index>`: served, or refused (null). */
  readonly #stages = new Map<string, StageServer | null>();
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
  }

  /**
   * Connects to the cluster and starts serving it.
   *
   * @param options The servers, credentials and TLS, the worker budget, and
   * which targets the host may run.
   * @returns The running host.
   * @throws {TypeError} If an option is of the wrong type.
   * @throws {RangeError} If `workers` is not a positive integer.
   *
   * @example A host of two workers that runs source targets (needs a server)
   * ```ts ignore
   * import { WorkerHost } from "@mpipe/mpipe/jetstream";
   *
   * const host = await WorkerHost.start({
   *   servers: "127.0.0.1:4222",
   *   workers: 2,
   *   allowSource: true,
   * });
   * await host.close();
   * ```
   */
  static async start(options: WorkerHostOptions): Promise<WorkerHost> {
    const checked = checkHostOptions(options);
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
    for (const server of this.#stages.values()) if (server?.live) count++;
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
    this.#stopWatching();
    for (const server of this.#stages.values()) server?.stop();
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
    };
    this.#answerLoop(local);
    return local;
  }

  /** Publishes each answer of the local pipeline, then acks its batch. */
  async #answerLoop(local: LocalRun): Promise<void> {
    try {
      for await (const [id, answer] of local.pipe) {
        const held = local.held.get(id);
        if (held === undefined) continue;
        this.#answer(local, id, held, answer);
      }
    } catch {
      // The local pipeline failed (its workers were lost too often): start
      // another, and give the batches it held back to the cluster.
      if (this.#closing) return;
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
    const max = this.#nc.info?.max_payload ?? 1 << 20;
    const parts = splitAnswer(this.#encoder, answer, max);
    const seq = message.info.streamSequence;
    Promise.all(
      parts.map((part, i) => this.#publish(server, part, `a${seq}.${i}`)),
    ).then(
      () => {
        message.ack();
        this.#release(local, id);
      },
      // The stage is gone: nothing to ack.
      () => this.#release(local, id),
    );
  }

  /** Lets go of batch `id` of `local`: it was acked, answered or given back. */
  #release(local: LocalRun, id: number): void {
    const held = local.held.get(id);
    if (held === undefined) return;
    local.held.delete(id);
    held.server.release(held.since);
    held.done?.();
    const changed = this.#heldChanged;
    this.#heldChanged = null;
    changed?.resolve();
  }

  /**
   * Publishes to a stage's output until the server has stored it, through
   * reconnections; rejects only once the stage's stream is gone.
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
    const deliveries = message.info.deliveryCount;
    if (deliveries === 1) {
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
    const local = this.#local;
    const id = local.next++;
    local.held.set(id, { message, server, since: performance.now(), done });
    server.hold();
    await local.pipe.put([id, server.stage, message.data]).catch(() => {
      // The local pipeline failed; #answerLoop gives its batches back.
    });
  }

  /**
   * Runs task `task`, delivered again because its host was lost, alone on
   * this host: the host takes nothing else and waits until what it holds
   * is done; suspects take turns. Before the run, a note on the subject
   * `<aloneSubject>.<task>` counts it, and after it the notes are removed:
   * notes left say how many times the task killed a host it had to itself.
   * Past `maxAttempts` of those it fails without running again. Tasks that
   * only shared a host with it are counted by no note, and succeed.
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
        const runs = note === null ? 0 : Number(note.string());
        if (runs >= spec.maxAttempts) {
          await this.#fail(
            server,
            message,
            task,
            new Error(
              `the task lost its host ${runs} times while it ran alone there (the host was killed or crashed): it is not run again`,
            ),
            undefined,
          );
        } else {
          await this.#js.publish(
            subject,
            new TextEncoder().encode(`${runs + 1}`),
          );
          const alone = Promise.withResolvers<void>();
          await this.#hold(server, message, alone.resolve);
          await alone.promise;
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

  /** Puts each task of a batch back as a message of its own, then acks the batch. */
  async #split(server: StageServer, message: JsMsg): Promise<void> {
    const { from, count, reader } = readBatch(message.data);
    const singles: Uint8Array[] = [];
    for (let i = 0; i < count; i++) {
      const start = reader.at;
      reader.frame();
      singles.push(batchMessage(from + i, 1, message.data, start, reader.at));
    }
    try {
      await Promise.all(singles.map((single, i) =>
        this.#js.publish(
          server.spec.inSubject,
          single,
          // A batch split twice (by two hosts) gives each task once.
          { msgID: `t${from + i}`, timeout: 5_000 },
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
    const { count } = readBatch(message.data);
    const answer = failedAnswer(
      this.#encoder,
      from,
      count,
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
          this.#announced(message.data);
        }
      } catch {
        // Reconnecting, or the server restarted: watch again.
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

  /** A stage was announced: serve it, or refuse it. */
  #announced(bytes: Uint8Array): void {
    let spec: StageSpec;
    try {
      spec = decodeMessage(this.#decoder, bytes) as StageSpec;
    } catch {
      return;
    }
    const key = `${spec.run}/${spec.index}`;
    if (this.#stages.has(key)) return;
    const refusal = this.#refusal(spec);
    if (refusal !== null) {
      this.#stages.set(key, null);
      this.#js.publish(
        spec.outSubject,
        refusalMessage(this.#encoder, this.name, refusal),
        { msgID: `r${this.name}` },
      ).catch(() => {});
      return;
    }
    const server = new StageServer(this.#port, spec, {
      key,
      name: spec.name,
      target: spec.target,
      args: spec.args,
      concurrency: spec.concurrency,
      host: this.name,
    }, this.#options.workers);
    this.#stages.set(key, server);
    server.serve();
  }

  /** Why the host may not run `spec`'s stage, or null if it may. */
  #refusal(spec: StageSpec): string | null {
    if (spec.protocol !== PROTOCOL) {
      return `the stage speaks protocol ${spec.protocol}, the host ${PROTOCOL}: run the same version of @mpipe/mpipe on the coordinator and the hosts`;
    }
    const target = spec.target;
    if (target.kind === "source") {
      return this.#options.allowSource ? null : (
        "it is a function or class target, sent as source text, and this host runs those only when started with --allow-source (allowSource: true)"
      );
    }
    const allowed = this.#options.allowTargets;
    if (allowed.some((prefix) => target.specifier.startsWith(prefix))) {
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
  ) {
    this.#host = host;
    this.spec = spec;
    this.stage = stage;
    this.#workers = workers;
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
    "allowSource",
    "allowTargets",
    "hostName",
  ];
  for (const key of Object.keys(checked)) {
    if (!known.includes(key)) {
      throw new TypeError(
        `WorkerHost.start: 'options.${key}' is not an option; the options are ${
          known.join(", ")
        }`,
      );
    }
  }
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
  const targets = checked.allowTargets;
  if (
    targets !== undefined &&
    !(Array.isArray(targets) &&
      targets.every((t) => typeof t === "string" && t !== ""))
  ) {
    throw new TypeError(
      "WorkerHost.start: 'options.allowTargets' must be an array of URL prefixes",
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

function defaultHostName(): string {
  let name = "host";
  try {
    name = Deno.hostname();
  } catch { /* No --allow-sys=hostname. */ }
  return `${name}:${Deno.pid}`;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
