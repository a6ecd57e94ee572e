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
 *   third of the stage's `ackWait`, and the stage's bridge too, in its beat
 *   every second (see stage_server.ts): only a host that is lost lets its
 *   batches go to others, within seconds.
 * - A batch delivered again (its host was lost) is split into single tasks,
 *   each delivered on its own; a single task delivered again runs alone on
 *   its host, so that a task that kills its host takes no other with it,
 *   and fails once it has done so `maxAttempts` times (see `#isolate`). A
 *   task whose worker is lost (it called `Deno.exit()`) fails at once, as
 *   one that cost a worker (`WORKER_LOST`, charged to its crashBudget).
 * - A batch held longer than its stage's `taskTimeout` per task is let go
 *   (see `#timedOut`): answered with the timeout, or split, and the local
 *   pipeline that runs it is replaced.
 * - A stage that it may not run is refused: the refusal answers the first
 *   batch it takes of the stage (echoing the batch's token, as answers do),
 *   and the pipeline fails with it.
 *
 * Its parts: `stage_watch.ts` reads the announcements and keeps the
 * stages, `trust.ts` decides which it takes and runs, `stage_server.ts`
 * pulls a stage's batches, `replies.ts` publishes failures, refusals and
 * split batches; this file holds the batches and runs them.
 *
 * @module
 */

import { UnorderedStage } from "../../stage/stage.ts";
import { Pipeline } from "../../pipeline.ts";
import type { StageError } from "../../errors.ts";
import type { HostResult, HostTask } from "./host_worker.ts";
import {
  connectNats,
  delay,
  jetstream,
  type JetStreamClient,
  type JetStreamManager,
  jetstreamManager,
  type JsMsg,
  type NatsConnection,
  permanent,
} from "../connection.ts";
import {
  bodyLimit,
  Encoder,
  readBatch,
  splitAnswer,
  splitFromLost,
  WORKER_LOST,
} from "../messages.ts";
import { importPublicKey } from "../keys.ts";
import { ensureStagesStream } from "../streams.ts";
import {
  checkHostOptions,
  defaultHostName,
  type HostSettings,
  type WorkerHostOptions,
} from "./host_options.ts";
import { Replies } from "./replies.ts";
import type { HostPort, StageServer } from "./stage_server.ts";
import { StageWatch } from "./stage_watch.ts";

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
  readonly #replies: Replies;
  readonly #watch: StageWatch;
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
    this.#replies = new Replies(name, this.#js, jsm);
    this.#local = this.#startLocal();
    // What the stage servers use of the host.
    const port: HostPort = {
      js: () => this.#js,
      take: (server, message) => this.#take(server, message),
      gone: (stream, error) => this.#replies.gone(stream, error),
      heldBy: (server) => this.#heldBy(server),
      ended: (server) => this.#watch.forget(server),
      beat: (subject, payload) => {
        try {
          this.#nc.publish(subject, payload);
        } catch { /* Closing. */ }
      },
    };
    this.#watch = new StageWatch(name, options, this.#js, jsm, port);
  }

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
    return this.#watch.serving;
  }

  /** How many stage announcements the host ignored: unsigned or forged (with `trust`), replayed, or malformed. */
  get ignored(): number {
    return this.#watch.ignored;
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
    this.#watch.stop();
    const local = this.#local;
    // Wait for the batches in hand, then end the local pipeline.
    for (let i = 0; i < 600 && local.held.size > 0; i++) {
      await delay(50);
    }
    await local.pipe.close().catch(() => {});
    await local.pipe.done.catch(() => {});
    await this.#watch.watching.catch(() => {});
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
      this.#replies.split(server, message);
      return;
    }
    this.#replies.fail(
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
      parts.map((part, i) =>
        this.#replies.publish(server, part, `a${seq}.${i}`)
      ),
    ).then(
      () => {
        message.ack();
        this.#release(local, id);
      },
      (error) => {
        if (!permanent(error)) return this.#release(local, id); // The stage is gone.
        // The server refuses the answer for good: its tasks fail with why.
        const { from } = readBatch(message.data);
        this.#replies.fail(server, message, from, error, undefined).finally(
          () => this.#release(local, id),
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
   * Takes a batch from a stage's consumer into the local pipeline. A batch
   * delivered again (its host was lost) is split into single tasks; a single
   * task delivered again runs alone (see `#isolate`).
   */
  async #take(server: StageServer, message: JsMsg): Promise<void> {
    if (server.refusal !== null) {
      return await this.#replies.refuse(server, message);
    }
    const deliveries = message.info.deliveryCount;
    if (deliveries === 1 && !splitFromLost(message)) {
      // Nothing else runs while a suspect does (see #isolate).
      while (this.#paused !== null) {
        this.#waiting.set(message, server);
        await this.#paused.promise;
      }
      this.#waiting.delete(message);
      return await this.#hold(server, message, null);
    }
    const { from, count } = readBatch(message.data);
    if (count > 1) return await this.#replies.split(server, message);
    if (deliveries >= server.spec.maxDeliver) {
      // The consumer's last delivery: answer it, or it stays for ever.
      return await this.#replies.quarantine(
        server,
        message,
        from,
        new Error(
          `the task was delivered ${deliveries} times without an answer: it is not run again`,
        ),
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
          await this.#replies.quarantine(
            server,
            message,
            task,
            new Error(
              `the task was quarantined: it lost its host ${runs} times (killed, crashed or silent past ackWait; ${alone} of them while it ran alone there), its stage's crashBudget of ${spec.maxAttempts}: it is not run again`,
            ),
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
    const done = count > 1
      ? this.#replies.split(server, message)
      : this.#replies.fail(
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
        WORKER_LOST,
      );
    done.finally(() => this.#release(local, id!));
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
