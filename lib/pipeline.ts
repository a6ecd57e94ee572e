/**
 * The pipeline: builds the rings and workers of every stage reachable from
 * its root, feeds tasks in and reads results out on the main thread without
 * ever blocking it (`Atomics.waitAsync`).
 *
 * @module
 */

import { Decoder, Encoder } from "./codec.ts";
import { PipelineClosedError, StageError } from "./errors.ts";
import { type Branch, InputLink, type InputMode, OutputPort } from "./link.ts";
import { type FilterConfig, FilterRuntime } from "./filter.ts";
import { Bell, Ring } from "./ring.ts";
import {
  type GetOptions,
  internalsOf,
  type Stage,
  type StageInternals,
  type StageOwner,
} from "./stage.ts";
import { StageStatus } from "./status.ts";
import { describe } from "./target.ts";
import { OrderedWorker, TaskWorker, UnorderedWorker } from "./worker.ts";
import {
  type WorkerConfig,
  type WorkerMessage,
  WorkerRuntime,
} from "./worker_runtime.ts";

export type { GetOptions };

/** Options of a pipeline. */
export interface PipelineOptions {
  /**
   * Bytes of each ring between two workers (a power of two, at least 4096).
   * Records larger than a quarter of it are carried in fragments.
   * @default {1048576}
   */
  ringBytes?: number;
  /**
   * How many times an idle thread (a worker waiting for tasks, or the main
   * thread waiting for results) looks again before it sleeps. Spinning saves
   * the tens of microseconds a wake-up costs, but only while the thread it
   * waits for runs on another core: with more threads than cores, a spinning
   * thread takes CPU from the very threads it waits for. A longer spin
   * (50 000: about 0.5 ms on the main thread, 1.5 ms in a worker) trims the
   * tail of one-at-a-time round trips, at that much CPU per idle gap.
   * @default {2000 (20 to 50 µs) when the pipeline's workers and the main
   * thread fit in `navigator.hardwareConcurrency` cores, else 0}
   */
  spin?: number;
}

/** Options of `put`. */
export interface PutOptions {
  /** Withdraw the task if it is still waiting for room when this signal aborts. */
  signal?: AbortSignal;
}

type AnyStage = Stage<never, unknown>;

/** Each stage's input link: its control block and one ring per producer. */
type Plan = Map<
  AnyStage,
  { control: SharedArrayBuffer; rings: SharedArrayBuffer[] }
>;

/** A leaf stage's output, read on the main thread. */
interface Leaf {
  stage: AnyStage;
  /** Null until the workers start (a Stage of a module target is inspected first). */
  link: InputLink | null;
  /** Results claimed and not yet read: `queue[head, count)`. The array keeps its length, so claims do not regrow it. */
  queue: unknown[];
  head: number;
  count: number;
  ended: boolean;
}

/** A word a worker may sleep on, and how to wake it. */
interface SleepWord {
  words: Int32Array;
  index: number;
  kind: "counter" | "lock" | "running";
}

/** A running worker and what it was started with. */
interface WorkerRecord {
  stage: AnyStage;
  config: WorkerConfig;
  worker: Worker;
  /** It exited, was lost or was terminated: ignore what it still says. */
  gone: boolean;
}

/** A task (or the stop) waiting for room in the input ring. */
interface Pending {
  bytes: Uint8Array | null;
  written: number;
  inBacklog: boolean;
  resolve(): void;
  reject(reason: unknown): void;
}

const RESOLVED = Promise.resolve();
const NONE: unique symbol = Symbol("none");
const CLAIM = 256;
const PUBLISH_EVERY = 32;
/** Most fast tasks a worker claims at once, alone in its stage or not. */
const SOLE_CLAIM = 64;
const SHARED_CLAIM = 16;
/** The default spin when every thread of the pipeline has a core of its own. */
export const SPIN = 2000;

let workerUrl: string | undefined;

/** The one script every stage worker runs: the runtime and what it needs. */
function runtimeUrl(): string {
  if (workerUrl === undefined) {
    const parts = [
      Bell,
      Ring,
      StageStatus,
      Encoder,
      Decoder,
      InputLink,
      OutputPort,
      TaskWorker,
      OrderedWorker,
      UnorderedWorker,
      FilterRuntime,
      WorkerRuntime,
    ].map(String);
    parts.push(
      "self.onmessage = (event) => { self.onmessage = null; WorkerRuntime.start(event.data); };",
    );
    workerUrl = URL.createObjectURL(
      new Blob([parts.join("\n\n")], { type: "text/javascript" }),
    );
  }
  return workerUrl;
}

/**
 * A pipeline of stages. Creating it builds and starts every worker of every
 * stage reachable from `root`. Put tasks with `put`, the stop request with
 * `put(null)` (or `close()`), and read results with `get` or `results()`.
 *
 * @typeParam I The type of the root stage's tasks.
 * @typeParam O The type of the results (of every leaf stage).
 *
 * @example The cookbook: two stages, ordered results
 * ```ts
 * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const stage1 = new OrderedStage((x: number) => x + 1, 2);
 * const stage2 = new OrderedStage((x: number) => x * 2, 2);
 * stage1.link(stage2);
 * await using pipe = new Pipeline<number, number>(stage1);
 * for (let i = 0; i < 5; i++) pipe.put(i);
 * pipe.put(null);
 * const results = [];
 * for await (const result of pipe.results()) results.push(result);
 * assert.deepEqual(results, [2, 4, 6, 8, 10]);
 * ```
 */
export class Pipeline<I, O> implements AsyncIterable<O>, AsyncDisposable {
  /**
   * Settles once every worker has exited (after the stop, a failure or
   * `terminate()`). If a stage failed and nothing ever read the results
   * (`get`, `results()`, iteration), it rejects with the `StageError`, so a
   * failure is never silent.
   */
  readonly done: Promise<void>;

  #stages: AnyStage[];
  #workers: WorkerRecord[] = [];
  #watchdog: ReturnType<typeof setInterval> | undefined;
  #alive = 0;
  #resolveDone!: () => void;
  #rejectDone!: (error: StageError) => void;
  /** Whether anything ever read results, and so will see a failure there. */
  #read = false;
  #ringBytes: number;
  #spin: number;

  // The input: the main thread is the root link's only producer.
  #input: Ring;
  #rootControl: Int32Array;
  #maxBacklog: number;
  #encoder = new Encoder();
  #pending: Pending[] = [];
  #draining = false;
  /** Records written to the input ring and not yet published. */
  #unpublished = 0;
  #flush: ReturnType<typeof setTimeout> | undefined;
  #stopped = false;
  #terminated = false;
  #failure: StageError | null = null;

  // The output: every leaf stage's workers write to rings the main thread reads.
  #bell = new Int32Array(new SharedArrayBuffer(16));
  #leaves: Leaf[] = [];
  #nextLeaf = 0;
  #seqs: number[] = [];
  /** Readers sleeping in `waitAsync`, which `put` wakes when results are here. */
  #readers: (() => void)[] = [];
  /**
   * Every word a worker may sleep on. A worker blocked in `Atomics.wait`
   * ignores `terminate()` until woken, so terminating is always followed by
   * notifying all of them.
   */
  #sleepWords: SleepWord[] = [];

  /**
   * Builds and starts every stage reachable from `root`.
   *
   * @param root The first stage: every task put goes to it.
   * @param options The pipeline's options.
   */
  constructor(root: Stage<I, unknown>, options: PipelineOptions = {}) {
    const { ringBytes, spin } = checkOptions(options);
    this.#ringBytes = ringBytes;
    this.done = new Promise((resolve, reject) => {
      this.#resolveDone = resolve;
      this.#rejectDone = reject;
    });
    this.#stages = collectStages(root as unknown as AnyStage);
    // Leaves are known now, so stage.get() works while workers start.
    const inFilters = new Set(
      this.#stages.flatMap((s) =>
        (internalsOf(s).filter?.stages ?? []).flatMap((sub) => reachable(sub))
      ),
    );
    for (const stage of this.#stages) {
      if (internalsOf(stage).next.length === 0 && !inFilters.has(stage)) {
        this.#leaves.push({
          stage,
          link: null,
          queue: [],
          head: 0,
          count: 0,
          ended: false,
        });
      }
    }
    const owner: StageOwner = {
      getFrom: (stage, options) => this.#get(this.#leafOf(stage), options),
      resultsFrom: (stage, options) =>
        this.#results(this.#leafOf(stage), options),
    };
    for (const stage of this.#stages) internalsOf(stage).owner = owner;
    const workers = this.#stages.reduce((sum, stage) => sum + stage.size, 0);
    this.#spin = spin ?? defaultSpin(workers + 1);

    const plan = this.#plan();
    const rootState = plan.get(this.#stages[0]!)!;
    this.#input = new Ring(rootState.rings[0]!);
    this.#rootControl = new Int32Array(rootState.control);
    this.#maxBacklog = internalsOf(this.#stages[0]!).maxBacklog;

    const unknown = this.#stages.filter((s) =>
      internalsOf(s).ordered === undefined
    );
    if (unknown.length === 0) this.#start(plan);
    else {
      // A Stage of a module target: import it here to learn its ordering.
      Promise.all(unknown.map((stage) => inspectModule(stage))).then(
        () => this.#start(plan),
        (error: StageError) => this.#fail(error),
      );
    }
  }

  // ---- building ----

  /** Allocates every link's control block and rings. */
  #plan(): Plan {
    const plan: Plan = new Map();
    const words = this.#sleepWords;
    for (const stage of this.#stages) {
      const status = new StageStatus(
        StageStatus.allocate(stage.size),
        stage.size,
      );
      internalsOf(stage).status = status;
      const previous = internalsOf(stage).previous;
      const producers = previous.length === 0
        ? 1
        : previous.reduce((sum, p) => sum + p.size, 0);
      const control = new SharedArrayBuffer(
        InputLink.bytes(Math.max(1, previous.length)),
      );
      const rings = Array.from(
        { length: producers },
        () => this.#allocateRing(),
      );
      plan.set(stage, { control, rings });
      const link = new Int32Array(control);
      words.push(
        { words: link, index: InputLink.BELL + Bell.COUNTER, kind: "counter" },
        { words: link, index: InputLink.LOCK, kind: "lock" },
        {
          words: link,
          index: InputLink.SPACE_BELL + Bell.COUNTER,
          kind: "counter",
        },
      );
      for (let i = 0; i < stage.size; i++) {
        words.push({
          words: status.words,
          index: status.at(i, StageStatus.RUNNING),
          kind: "running",
        });
      }
    }
    return plan;
  }

  #start(plan: Plan): void {
    if (this.#failure !== null || this.#terminated) return;
    const { subLinks, filters } = this.#planFilters(plan);
    for (const stage of this.#stages) {
      const state = internalsOf(stage);
      const { control, rings } = plan.get(stage)!;
      const sub = subLinks.get(stage);
      const leafRings: Branch[] = state.next.length > 0
        ? []
        : sub !== undefined
        ? sub
        : this.#addLeaf(stage);
      for (let index = 0; index < stage.size; index++) {
        const outputs: Branch[] = state.next.map((next) => {
          const target = plan.get(next)!;
          const nextState = internalsOf(next);
          return linkBranch(
            target.control,
            target.rings[ringIndex(nextState, stage, index)]!,
            nextState.maxBacklog,
            nextSeqWord(nextState, stage),
          );
        });
        if (leafRings.length > 0) outputs.push(leafRings[index]!);
        this.#spawn(stage, {
          stage: stage.name,
          index,
          target: state.shipped,
          ordered: state.ordered!,
          args: state.args,
          disableResult: state.disableResult,
          doStopTask: state.doStopTask,
          input: { control, rings, mode: inputMode(stage, state) },
          outputs,
          spin: this.#spin,
          onError: state.onError === "fail" ? "fail" : "skip",
          status: state.status!.buffer,
          size: stage.size,
          timed: Number.isFinite(state.taskTimeout),
          maxClaim: state.restart || Number.isFinite(state.taskTimeout)
            ? 1
            : stage.size > 1
            ? SHARED_CLAIM
            : SOLE_CLAIM,
          generation: 0,
          recover: null,
          filter: filters.get(stage) ?? null,
        });
      }
    }
    if (this.#stages.some((s) => Number.isFinite(internalsOf(s).taskTimeout))) {
      this.#startWatchdog();
    }
  }

  /** A ring whose space bell `#wakeSleepers` will ring. */
  #allocateRing(): SharedArrayBuffer {
    const ring = Ring.allocate(this.#ringBytes);
    this.#sleepWords.push({
      words: new Int32Array(ring, 0, Ring.CONTROL_BYTES >> 2),
      index: Ring.SPACE_BELL + Bell.COUNTER,
      kind: "counter",
    });
    return ring;
  }

  /** Stops a worker for good: even one asleep in `Atomics.wait` (see Bell.stop). */
  #stopWorker(record: WorkerRecord): void {
    record.gone = true;
    const { stage, config } = record;
    const status = internalsOf(stage).status!;
    Atomics.store(
      status.words,
      status.at(config.index, StageStatus.STOPPED),
      config.generation + 1,
    );
    record.worker.terminate();
  }

  /**
   * Wakes sleeping workers: the stopped ones then end, the others look again.
   * Each word's value changes, so that a worker between reading a bell and
   * sleeping on it cannot miss the wake-up. Lock and running words are only
   * touched when every worker stops (`all`): a lost worker never sleeps on a
   * lock, since it is lost while running task code.
   */
  #wakeSleepers(all: boolean): void {
    for (const { words, index, kind } of this.#sleepWords) {
      if (kind === "counter") Atomics.add(words, index, 1);
      else if (!all) continue;
      else Atomics.store(words, index, kind === "lock" ? 0 : 3);
      Atomics.notify(words, index);
    }
  }

  /** Starts one worker; `config.recover` says if it replaces a lost one. */
  #spawn(stage: AnyStage, config: WorkerConfig): void {
    const worker = new Worker(runtimeUrl(), {
      type: "module",
      name: `${stage.name}#${config.index}`,
    });
    const record: WorkerRecord = { stage, config, worker, gone: false };
    worker.onmessage = (event: MessageEvent<WorkerMessage>) =>
      this.#onMessage(record, event.data);
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      this.#lost(
        record,
        `it threw outside doTask(): ${event.message}`,
        event.error,
      );
    };
    worker.postMessage(config);
    this.#workers.push(record);
    this.#alive++;
  }

  /** Makes the rings from a leaf stage's workers to the main thread. */
  #addLeaf(stage: AnyStage): Branch[] {
    const control = new SharedArrayBuffer(InputLink.bytes(1));
    const rings = Array.from(
      { length: stage.size },
      () => this.#allocateRing(),
    );
    const mode: InputMode = {
      shared: false,
      groups: [groupOf(stage)],
      bounded: false,
      blocking: false,
    };
    this.#leafOf(stage).link = new InputLink(control, rings, mode, {
      words: this.#bell,
      base: 0,
    });
    return rings.map((ring) => ({
      ring,
      bell: this.#bell.buffer as SharedArrayBuffer,
      bellBase: 0,
      link: control,
      maxBacklog: 0,
      nextSeqWord: -1,
    }));
  }

  /**
   * Wires each FilterStage to its sub-pipelines: the filter's worker is the
   * only producer of each sub-pipeline's root, and the sub-pipeline's leaves
   * write to a link the filter reads (instead of to the main thread).
   */
  #planFilters(plan: Plan): {
    subLinks: Map<AnyStage, Branch[]>;
    filters: Map<AnyStage, FilterConfig>;
  } {
    const subLinks = new Map<AnyStage, Branch[]>();
    const filters = new Map<AnyStage, FilterConfig>();
    for (const stage of this.#stages) {
      const filter = internalsOf(stage).filter;
      if (filter === null) continue;
      const subs = filter.stages.map((root) => {
        const leaves = reachable(root).filter((s) =>
          internalsOf(s).next.length === 0
        );
        const control = new SharedArrayBuffer(InputLink.bytes(leaves.length));
        this.#sleepWords.push({
          words: new Int32Array(control),
          index: InputLink.BELL + Bell.COUNTER,
          kind: "counter",
        });
        const rings: SharedArrayBuffer[] = [];
        for (const leaf of leaves) {
          const branches: Branch[] = [];
          for (let i = 0; i < leaf.size; i++) {
            const ring = this.#allocateRing();
            rings.push(ring);
            branches.push(linkBranch(control, ring, Infinity, -1));
          }
          subLinks.set(leaf, branches);
        }
        const rootPlan = plan.get(root)!;
        return {
          input: linkBranch(
            rootPlan.control,
            rootPlan.rings[0]!,
            internalsOf(root).maxBacklog,
            -1,
          ),
          output: {
            control,
            rings,
            mode: {
              shared: false,
              groups: leaves.map(groupOf),
              bounded: false,
              blocking: true,
            },
          },
        };
      });
      filters.set(stage, {
        maxTasks: filter.maxTasks,
        dropResults: filter.dropResults,
        cacheResults: filter.cacheResults,
        doStopTask: filter.doStopTask,
        subs,
      });
    }
    return { subLinks, filters };
  }

  #onMessage(record: WorkerRecord, message: WorkerMessage): void {
    if (record.gone) return;
    const { stage, config } = record;
    switch (message.type) {
      case "exit":
        this.#stopWorker(record);
        this.#exited();
        break;
      case "error":
        this.#fail(workerError(stage, config.index, message));
        break;
      case "skipped": {
        const handler = internalsOf(stage).onError;
        if (typeof handler === "function") {
          handler(workerError(stage, config.index, {
            type: "error",
            phase: "task",
            task: message.task,
            error: message.error,
          }));
        }
        break;
      }
      case "lost":
        this.#lost(record, message.reason, message.error);
        break;
    }
  }

  /**
   * A worker ended without finishing (it called close() or Deno.exit(), threw
   * outside a task, or ran a task past its timeout). Fails the pipeline, or,
   * with `restart` (or a timeout under a skipping policy), starts a worker in
   * its place that first closes the tasks the lost one held.
   */
  #lost(record: WorkerRecord, reason: string, cause: unknown): void {
    if (record.gone || this.#failure !== null || this.#terminated) return;
    this.#stopWorker(record);
    this.#wakeSleepers(false);
    const { stage, config } = record;
    const state = internalsOf(stage);
    const status = state.status!;
    const from = status.words[status.at(config.index, StageStatus.FROM)]!;
    const to = status.words[status.at(config.index, StageStatus.TO)]!;
    const held = to > from
      ? `; it held task${to - from > 1 ? `s ${from} to ${to - 1}` : ` ${from}`}`
      : "";
    const timedOut = reason.startsWith("task");
    const replace = state.restart || (timedOut && state.onError !== "fail");
    const error = new StageError(
      `the worker was lost: ${reason}${held}${
        replace
          ? "; a new worker took its place and the held tasks were dropped"
          : ""
      }`,
      {
        stage: stage.name,
        worker: config.index,
        task: to > from ? from : undefined,
        cause,
      },
    );
    if (!replace) return this.#fail(error);
    Atomics.add(status.words, StageStatus.SKIPPED, to - from);
    Atomics.store(
      status.words,
      status.at(config.index, StageStatus.RUNNING),
      0,
    );
    this.#alive--;
    this.#workers.splice(this.#workers.indexOf(record), 1);
    this.#spawn(stage, {
      ...config,
      generation: config.generation + 1,
      recover: { from, to },
    });
    if (typeof state.onError === "function") state.onError(error);
  }

  /** Checks timed tasks regularly; a task past its stage's taskTimeout loses its worker. */
  #startWatchdog(): void {
    const timeouts = this.#stages.map((s) => internalsOf(s).taskTimeout);
    const period = Math.max(5, Math.min(250, Math.min(...timeouts) / 4));
    this.#watchdog = setInterval(() => {
      const now = performance.timeOrigin + performance.now();
      for (const record of [...this.#workers]) {
        const state = internalsOf(record.stage);
        if (record.gone || !Number.isFinite(state.taskTimeout)) continue;
        const status = state.status!;
        const index = record.config.index;
        const running = status.at(index, StageStatus.RUNNING);
        if (
          Atomics.load(status.words, running) === 1 &&
          now - status.started[index]! > state.taskTimeout &&
          // Take the task over; fails if the worker has just finished it.
          Atomics.compareExchange(status.words, running, 1, 2) === 1
        ) {
          const task = status.words[status.at(index, StageStatus.SEQ)];
          this.#lost(
            record,
            `task ${task} ran longer than its taskTimeout of ${state.taskTimeout} ms`,
            undefined,
          );
        }
      }
    }, period);
    // The watchdog alone must not keep the process alive.
    Deno.unrefTimer(this.#watchdog as unknown as number);
  }

  #exited(): void {
    if (--this.#alive === 0) this.#finish();
  }

  #finish(): void {
    if (this.#watchdog !== undefined) clearInterval(this.#watchdog);
    if (this.#failure !== null && !this.#read) this.#rejectDone(this.#failure);
    else this.#resolveDone();
  }

  #fail(error: StageError): void {
    if (this.#failure !== null || this.#terminated) return;
    this.#failure = error;
    this.#shutDown(error);
  }

  /** Terminates every worker and wakes every waiter on the main thread. */
  #shutDown(reason: unknown): void {
    clearTimeout(this.#flush);
    for (const record of this.#workers) this.#stopWorker(record);
    this.#wakeSleepers(true);
    this.#workers = [];
    this.#alive = 0;
    this.#finish();
    for (const pending of this.#pending.splice(0)) pending.reject(reason);
    Bell.ringAlways(this.#bell, 0);
    Bell.ringAlways(this.#input.control, Ring.SPACE_BELL);
    Bell.ringAlways(this.#rootControl, InputLink.SPACE_BELL);
  }

  // ---- input ----

  /**
   * Puts a task into the pipeline, or the stop request (`null`). Tasks enter
   * in call order even when not awaited; the returned Promise settles once the
   * task is in the root stage's input ring, so awaiting it is the backpressure.
   * The task is copied at the call, as by `structuredClone`: a value that
   * cannot be cloned (a `DataCloneError`), or that encodes to more than
   * 2 GiB - 1 bytes (a `RangeError`), is refused (the Promise rejects) and
   * nothing else is lost.
   * A getter of the task may itself put a task; that one enters first, as
   * with `postMessage`.
   *
   * @param task The task, or `null` to request the stop.
   * @param options Options, such as an `AbortSignal`.
   */
  put(task: I | null, options?: PutOptions): Promise<void> {
    try {
      checkCallOptions("put", options).signal?.throwIfAborted();
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.#failure !== null) return Promise.reject(this.#failure);
    if (this.#stopped || this.#terminated) {
      return Promise.reject(
        new PipelineClosedError(
          this.#terminated
            ? "The pipeline was terminated: create a new Pipeline to put more tasks"
            : "The stop request was already put: put every task before null, or create a new Pipeline",
          task,
        ),
      );
    }
    let bytes: Uint8Array | null = null;
    if (task === null) this.#stopped = true;
    else {
      const encoder = this.#encoder.idle();
      let length: number;
      try {
        length = encoder.encode(task);
      } catch (error) {
        return Promise.reject(error);
      }
      const encoded = encoder.bytes;
      if (this.#pending.length === 0 && this.#enterBacklog()) {
        const written = this.#input.write(Ring.DATA, 0, encoded, 0, length);
        if (written === length) {
          this.#publishSoon();
          if (this.#readers.length !== 0) this.#wakeReaders();
          return RESOLVED;
        }
        this.#publishInput();
        return this.#enqueue(encoded.slice(0, length), written, true, options);
      }
      bytes = encoded.slice(0, length);
    }
    return this.#enqueue(bytes, 0, false, options);
  }

  /** Requests the stop, like `put(null)`. */
  close(): Promise<void> {
    return this.put(null);
  }

  #enqueue(
    bytes: Uint8Array | null,
    written: number,
    inBacklog: boolean,
    options: PutOptions | undefined,
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      const pending: Pending = { bytes, written, inBacklog, resolve, reject };
      const signal = options?.signal;
      if (signal !== undefined && written === 0) {
        signal.throwIfAborted();
        signal.addEventListener("abort", () => {
          const at = this.#pending.indexOf(pending);
          // Only a task none of whose bytes were written can be withdrawn.
          if (at > 0 || (at === 0 && pending.written === 0)) {
            this.#pending.splice(at, 1);
            if (pending.inBacklog) {
              Atomics.sub(this.#rootControl, InputLink.BACKLOG, 1);
            }
            if (pending.bytes === null) this.#stopped = false;
            reject(signal.reason);
          }
        }, { once: true });
      }
      this.#pending.push(pending);
      this.#drain();
    });
  }

  /**
   * Writes waiting tasks as room appears, in order. The main thread's own
   * consumer also pumps (see `#takeFrom`), because a `waitAsync` wake-up is a
   * macrotask that cannot run while results keep the microtask queue busy.
   */
  async #drain(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    try {
      while (this.#pending.length > 0 && this.#failure === null) {
        // Arm both bells before the last try, so no release is missed.
        const backlog = Bell.arm(this.#rootControl, InputLink.SPACE_BELL);
        const room = Bell.arm(this.#input.control, Ring.SPACE_BELL);
        if (this.#pump()) continue;
        const waiting = this.#pending[0];
        if (waiting === undefined) break;
        await (waiting.inBacklog
          ? Atomics.waitAsync(
            this.#input.control,
            Ring.SPACE_BELL + Bell.COUNTER,
            room,
          )
          : Atomics.waitAsync(
            this.#rootControl,
            InputLink.SPACE_BELL + Bell.COUNTER,
            backlog,
          )).value;
      }
    } finally {
      this.#draining = false;
    }
  }

  /** Writes as many waiting tasks as fit now; true if it made progress. */
  #pump(): boolean {
    const input = this.#input;
    let progress = false;
    for (;;) {
      const pending = this.#pending[0];
      if (pending === undefined) break;
      if (!pending.inBacklog) {
        if (!this.#enterBacklog()) break;
        pending.inBacklog = true;
      }
      const before = pending.written;
      let complete: boolean;
      if (pending.bytes === null) complete = input.writeEmpty(Ring.STOP, 0);
      else {
        pending.written = input.write(
          Ring.DATA,
          0,
          pending.bytes,
          pending.written,
          pending.bytes.length,
        );
        complete = pending.written === pending.bytes.length;
      }
      if (!complete) {
        progress ||= pending.written !== before;
        break;
      }
      progress = true;
      this.#pending.shift();
      pending.resolve();
    }
    if (progress) this.#publishInput();
    return progress;
  }

  #publishInput(): void {
    this.#unpublished = 0;
    if (this.#input.publish()) Bell.ring(this.#rootControl, InputLink.BELL);
  }

  /**
   * Publishes a run of puts at once: every PUBLISH_EVERY records, at once if
   * the root's workers sleep, and otherwise before the main thread waits or at
   * the next macrotask. Each publish moves the head's cache line to the
   * consumers, so one per record would cost the producer dearly.
   */
  #publishSoon(): void {
    // The flag is a hint, read plainly (an Atomics call costs ~10 ns in V8):
    // a stale read only delays this publish to the next run or the flush.
    if (
      ++this.#unpublished >= PUBLISH_EVERY ||
      this.#rootControl[InputLink.BELL + Bell.WAITING] !== 0
    ) {
      return this.#publishInput();
    }
    if (this.#flush === undefined) {
      this.#flush = setTimeout(() => {
        this.#flush = undefined;
        if (this.#unpublished !== 0) this.#publishInput();
      }, 0);
    }
  }

  /** Takes a place in the root stage's backlog, if it is bounded and not full. */
  #enterBacklog(): boolean {
    if (this.#maxBacklog === Infinity) return true;
    const control = this.#rootControl;
    for (;;) {
      const backlog = Atomics.load(control, InputLink.BACKLOG);
      if (backlog >= this.#maxBacklog) return false;
      if (
        Atomics.compareExchange(
          control,
          InputLink.BACKLOG,
          backlog,
          backlog + 1,
        ) === backlog
      ) return true;
    }
  }

  // ---- output ----

  /**
   * Reads the next result of any leaf stage: `null` once the stop request has
   * drained through every stage and every result was read. Rejects with a
   * `StageError` if a stage failed.
   *
   * @param options A timeout or an `AbortSignal`; giving up loses nothing.
   */
  get(options?: GetOptions): Promise<O | null> {
    return this.#get(null, options) as Promise<O | null>;
  }

  /** Iterates over the results until the stop request has drained. */
  results(options?: GetOptions): AsyncIterableIterator<O> {
    return this.#results(null, options) as AsyncIterableIterator<O>;
  }

  /** Iterates over the results, like `results()`. */
  [Symbol.asyncIterator](): AsyncIterableIterator<O> {
    return this.results();
  }

  #results(
    leaf: Leaf | null,
    options: GetOptions | undefined,
  ): AsyncIterableIterator<unknown> {
    checkCallOptions("results", options);
    this.#read = true;
    return new ResultIterator(
      () => this.#take(leaf),
      () => this.#get(leaf, options),
    );
  }

  async #get(
    leaf: Leaf | null,
    options: GetOptions | undefined,
  ): Promise<unknown> {
    this.#read = true;
    const { timeout, signal } = checkCallOptions("get", options);
    const deadline = timeout === undefined ? Infinity : Date.now() + timeout;
    for (;;) {
      if (this.#failure !== null) throw this.#failure;
      const value = this.#take(leaf);
      if (value !== NONE) return value;
      if (this.#ended(leaf)) return null;
      const counter = Bell.arm(this.#bell, 0);
      const again = this.#take(leaf);
      if (again !== NONE) return again;
      if (this.#ended(leaf) || this.#failure !== null) continue;
      if (this.#unpublished !== 0) this.#publishInput();
      if (this.#pending.length !== 0) this.#pump();
      if (this.#spinForOutput(counter)) continue;
      await this.#waitForOutput(counter, deadline, timeout, signal);
    }
  }

  /**
   * Watches the doorbell a bounded number of times before sleeping: a result
   * that is microseconds away is worth a short spin, since a `waitAsync`
   * wake-up costs tens of microseconds. The bell, armed with `counter`, moves
   * only when something new is published; records already in the rings may
   * be ones an ordered merge cannot take yet.
   */
  #spinForOutput(counter: number): boolean {
    for (let spin = 0; spin < this.#spin; spin++) {
      if (Atomics.load(this.#bell, Bell.COUNTER) !== counter) return true;
    }
    return false;
  }

  #waitForOutput(
    counter: number,
    deadline: number,
    timeout: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<unknown> {
    signal?.throwIfAborted();
    const left = deadline - Date.now();
    const timedOut = () =>
      new DOMException(
        `get() timed out after ${timeout} ms; nothing was lost: call get() again to wait longer`,
        "TimeoutError",
      );
    if (left <= 0) throw timedOut();
    const wait = Atomics.waitAsync(
      this.#bell,
      Bell.COUNTER,
      counter,
      left === Infinity ? undefined : left,
    );
    if (!wait.async) return RESOLVED;
    // Whichever comes first: a worker's doorbell, or `put` seeing results
    // (a doorbell wake-up waits behind the producer's microtasks).
    const woken = Promise.race([
      wait.value,
      new Promise<"ok">((resolve) => this.#readers.push(() => resolve("ok"))),
    ]).then((result) => {
      if (result === "timed-out") throw timedOut();
    });
    if (signal === undefined) return woken;
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      woken.then(resolve, reject).finally(() =>
        signal.removeEventListener("abort", onAbort)
      );
    });
  }

  /** Wakes the sleeping readers if a leaf ring holds results. */
  #wakeReaders(): void {
    // A loop, not some(): this runs on every put while a reader waits.
    const leaves = this.#leaves;
    for (let i = 0; i < leaves.length; i++) {
      if (leaves[i]!.link?.hasData()) {
        for (const wake of this.#readers.splice(0)) wake();
        return;
      }
    }
  }

  /** Takes one result that is already here, or NONE. */
  #take(leaf: Leaf | null): unknown {
    if (this.#failure !== null) return NONE;
    if (leaf !== null) return this.#takeFrom(leaf);
    const leaves = this.#leaves;
    for (let i = 0; i < leaves.length; i++) {
      const at = (this.#nextLeaf + i) % leaves.length;
      const value = this.#takeFrom(leaves[at]!);
      if (value !== NONE) {
        this.#nextLeaf = at;
        return value;
      }
    }
    return NONE;
  }

  #takeFrom(leaf: Leaf): unknown {
    if (leaf.head === leaf.count) {
      if (leaf.ended || this.#terminated) return NONE;
      if (this.#pending.length !== 0) this.#pump();
      if (leaf.link === null) return NONE;
      const count = leaf.link.claim(leaf.queue, this.#seqs, CLAIM);
      if (count < 0) leaf.ended = true;
      if (count <= 0) return NONE;
      leaf.head = 0;
      leaf.count = count;
    }
    const value = leaf.queue[leaf.head];
    leaf.queue[leaf.head++] = undefined;
    return value;
  }

  /** Whether no result will ever come (from `leaf`, or from any leaf). */
  #ended(leaf: Leaf | null): boolean {
    if (this.#terminated) return true;
    const done = (l: Leaf) => l.ended && l.head === l.count;
    return leaf !== null ? done(leaf) : this.#leaves.every(done) &&
      this.#leaves.length > 0;
  }

  #leafOf(stage: AnyStage): Leaf {
    const leaf = this.#leaves.find((l) => l.stage === stage);
    if (leaf !== undefined) return leaf;
    const next = internalsOf(stage).next.map((s) => `'${s.name}'`).join(", ");
    throw new TypeError(
      `Stage '${stage.name}' is not a leaf stage: its results go to ${next}; read the results of a leaf stage, or of the pipeline`,
    );
  }

  // ---- ending ----

  /** Stops now: terminates every worker; results not yet read are dropped. */
  terminate(): void {
    if (this.#terminated) return;
    this.#terminated = true;
    this.#shutDown(
      new PipelineClosedError(
        "The pipeline was terminated before this task entered it",
        undefined,
      ),
    );
  }

  /** Terminates the pipeline if it is still running, and waits for `done`. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#alive > 0) this.terminate();
    await this.done;
  }
}

/**
 * The iterator of `results()`: hands out a result that is already here in an
 * already-settled Promise, which costs far less than an async generator.
 */
class ResultIterator implements AsyncIterableIterator<unknown> {
  #take: () => unknown;
  #get: () => Promise<unknown>;
  #finished = false;

  constructor(take: () => unknown, get: () => Promise<unknown>) {
    this.#take = take;
    this.#get = get;
  }

  next(): Promise<IteratorResult<unknown>> {
    if (this.#finished) {
      return Promise.resolve({ value: undefined, done: true });
    }
    const value = this.#take();
    if (value !== NONE) return Promise.resolve({ value, done: false });
    return this.#get().then(
      (next): IteratorResult<unknown> => {
        if (next !== null) return { value: next, done: false };
        this.#finished = true;
        return { value: undefined, done: true };
      },
      (error) => {
        this.#finished = true;
        throw error;
      },
    );
  }

  return(): Promise<IteratorResult<unknown>> {
    this.#finished = true;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<unknown> {
    return this;
  }
}

/** `root` and every stage its links (and, `throughFilters`, its filters' sub-pipelines) lead to. */
function reachable(root: AnyStage, throughFilters = false): AnyStage[] {
  const stages: AnyStage[] = [];
  const stack = [root];
  while (stack.length > 0) {
    const stage = stack.pop()!;
    if (stages.includes(stage)) continue;
    stages.push(stage);
    stack.push(...internalsOf(stage).next);
    if (throughFilters) {
      stack.push(...(internalsOf(stage).filter?.stages ?? []));
    }
  }
  return stages;
}

/** Every stage reachable from `root`, root first; checks they can be built. */
function collectStages(root: AnyStage): AnyStage[] {
  if (internalsOf(root) === undefined) {
    throw new TypeError(
      `Pipeline: 'root' must be a Stage, got ${describe(root)}`,
    );
  }
  const stages = reachable(root, true);
  for (const stage of stages) {
    const state = internalsOf(stage);
    if (state.owner !== null) {
      throw new TypeError(
        `Pipeline: stage '${stage.name}' already belongs to another pipeline: create new stages for each pipeline`,
      );
    }
    for (const previous of state.previous) {
      if (stage === root) {
        throw new TypeError(
          `Pipeline: the root stage '${root.name}' is linked from stage '${previous.name}': build the pipeline from the first stage`,
        );
      }
      if (!stages.includes(previous)) {
        throw new TypeError(
          `Pipeline: stage '${stage.name}' is linked from stage '${previous.name}', which is not reachable from the root '${root.name}'`,
        );
      }
    }
  }
  return stages;
}

/**
 * A producer's branch into a stage's input link, whose control block is also
 * the consumers' doorbell; an unbounded backlog (Infinity) is sent as 0.
 */
function linkBranch(
  control: SharedArrayBuffer,
  ring: SharedArrayBuffer,
  maxBacklog: number,
  nextSeqWord: number,
): Branch {
  return {
    ring,
    bell: control,
    bellBase: InputLink.BELL,
    link: control,
    maxBacklog: Number.isFinite(maxBacklog) ? maxBacklog : 0,
    nextSeqWord,
  };
}

/** The index, among `next`'s input rings, of the ring from `stage`'s worker `index`. */
function ringIndex(
  next: StageInternals,
  stage: AnyStage,
  index: number,
): number {
  let offset = 0;
  for (const previous of next.previous) {
    if (previous === stage) return offset + index;
    offset += previous.size;
  }
  throw new Error("unreachable: stage is not upstream of next");
}

function inputMode(stage: AnyStage, state: StageInternals): InputMode {
  const previous = state.previous;
  return {
    shared: stage.size > 1,
    groups: previous.length === 0
      ? [{ size: 1, merge: false }]
      : previous.map(groupOf),
    bounded: Number.isFinite(state.maxBacklog),
    blocking: true,
  };
}

/** The rings `upstream`'s workers feed a link with: merged by sequence if it is ordered with several workers. */
function groupOf(upstream: AnyStage): { size: number; merge: boolean } {
  return {
    size: upstream.size,
    merge: internalsOf(upstream).ordered === true && upstream.size > 1,
  };
}

/** The NEXT_SEQ word `stage`'s group has in `next`'s link, if that group is merged; else -1. */
function nextSeqWord(next: StageInternals, stage: AnyStage): number {
  const group = next.previous.indexOf(stage);
  return groupOf(stage).merge
    ? InputLink.groupWord(group, InputLink.NEXT_SEQ)
    : -1;
}

async function inspectModule(stage: AnyStage): Promise<void> {
  const state = internalsOf(stage);
  const shipped = state.shipped;
  if (shipped.kind !== "module") return;
  let value: unknown;
  try {
    value = (await import(shipped.specifier))[shipped.exportName];
  } catch (error) {
    throw loadError(stage.name, undefined, error);
  }
  const ordered = typeof value === "function"
    ? (value as { ordered?: unknown }).ordered
    : undefined;
  if (typeof ordered !== "boolean") {
    throw new StageError(
      `export '${shipped.exportName}' of ${shipped.specifier} is not a worker class: a Stage needs a class extending OrderedWorker or UnorderedWorker; use OrderedStage or UnorderedStage for a task function`,
      { stage: stage.name },
    );
  }
  state.ordered = ordered;
}

function loadError(
  stage: string,
  worker: number | undefined,
  error: unknown,
): StageError {
  const message = error instanceof Error ? error.message : String(error);
  const hint = /read access|NotCapable|PermissionDenied/i.test(message)
    ? " (a module target is imported by the stage's workers, which need read access for a local file; or pass the function or class itself)"
    : "";
  return new StageError(`cannot load the target: ${message}${hint}`, {
    stage,
    worker,
    cause: error,
  });
}

/** What to do when a shipped target used a name that does not exist in the worker. */
function missingNameHint(stage: AnyStage, error: unknown): string {
  const missing = error instanceof ReferenceError
    ? /^(\S+) is not defined$/.exec(error.message)
    : null;
  if (missing === null || internalsOf(stage).shipped.kind !== "source") {
    return "";
  }
  return `: the target refers to '${
    missing[1]
  }', which does not exist in the worker. A function or class target is shipped by its source and may use only globals and its parameters: move it into a module and pass a module target, e.g. new URL("./task.ts", import.meta.url)`;
}

function workerError(
  stage: AnyStage,
  index: number,
  message: Extract<WorkerMessage, { type: "error" }>,
): StageError {
  const { phase, task, error } = message;
  const hint = missingNameHint(stage, error);
  if (phase === "load" && hint === "") {
    return loadError(stage.name, index, error);
  }
  const text = error instanceof Error ? error.message : String(error);
  const what = phase === "load"
    ? "cannot load the target"
    : phase === "init"
    ? "doInit() failed"
    : `task ${task} failed`;
  return new StageError(`${what}: ${text}${hint}`, {
    stage: stage.name,
    worker: index,
    task,
    cause: error,
  });
}

/**
 * The spin of a pipeline of `threads` threads (its workers and the main
 * thread): spin briefly, and only when each has a core of its own. On a 2-core
 * box, spin 0 against 2000 raised W2 (5 threads) by 9% and W3's speedup
 * (3 threads) from 1.79 to 1.93; W6 (2 threads) has a 5 µs median with the
 * spin and 16–19 µs without. A spin of 50 000 (1.5 ms in a worker) cuts W6's
 * p99 from 80–170 µs to 22–26 µs, but costs W4 14% (a spinning worker takes
 * the core V8's garbage collector needs) and burns that much CPU in every gap
 * of a bursty stream, so it is an option, not the default.
 */
export function defaultSpin(
  threads: number,
  cores: number = navigator.hardwareConcurrency,
): number {
  return threads <= cores ? SPIN : 0;
}

function checkOptions(
  options: unknown,
): { ringBytes: number; spin: number | undefined } {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(
      `Pipeline: 'options' must be an object, got ${describe(options)}`,
    );
  }
  const { ringBytes = 1 << 20, spin, ...rest } = options as PipelineOptions;
  const unknown = Object.keys(rest)[0];
  if (unknown !== undefined) {
    throw new TypeError(
      `Pipeline: 'options.${unknown}' is not a pipeline option; the options are ringBytes, spin`,
    );
  }
  if (
    typeof ringBytes !== "number" || !Number.isInteger(ringBytes) ||
    ringBytes < 4096 || (ringBytes & (ringBytes - 1)) !== 0 ||
    ringBytes > 1 << 30
  ) {
    throw new RangeError(
      `Pipeline: 'options.ringBytes' must be a power of two from 4096 to 2^30, got ${
        describe(ringBytes)
      }`,
    );
  }
  if (
    spin !== undefined &&
    (typeof spin !== "number" || !Number.isInteger(spin) || spin < 0)
  ) {
    throw new RangeError(
      `Pipeline: 'options.spin' must be a non-negative integer, got ${
        describe(spin)
      }`,
    );
  }
  return { ringBytes, spin };
}

/** What `checkCallOptions` returns for no options: one object, not one per call. */
const NO_CALL_OPTIONS = Object.freeze({
  timeout: undefined,
  signal: undefined,
});

/** Checks the options of `call`: `{ timeout?, signal? }` (`put` takes no timeout). */
function checkCallOptions(
  call: "get" | "results" | "put",
  options: GetOptions | undefined,
): { timeout: number | undefined; signal: AbortSignal | undefined } {
  if (options === undefined) return NO_CALL_OPTIONS;
  if (typeof options !== "object" || options === null) {
    throw new TypeError(
      `${call}: 'options' must be an object, got ${describe(options)}`,
    );
  }
  const names = call === "put" ? ["signal"] : ["timeout", "signal"];
  for (const key of Object.keys(options)) {
    if (!names.includes(key)) {
      throw new TypeError(
        `${call}: 'options.${key}' is not an option; the options are ${
          names.join(", ")
        }`,
      );
    }
  }
  const { timeout, signal } = options;
  if (
    timeout !== undefined &&
    (typeof timeout !== "number" || Number.isNaN(timeout) || timeout < 0)
  ) {
    throw new RangeError(
      `${call}: 'options.timeout' must be a non-negative number of milliseconds, got ${
        describe(timeout)
      }`,
    );
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new TypeError(
      `${call}: 'options.signal' must be an AbortSignal, got ${
        describe(signal)
      }`,
    );
  }
  return { timeout, signal };
}
