/**
 * The loop each stage worker runs: claim tasks from the input link, run the
 * target, write results to the output port, and pass the stop on.
 *
 * Shipped to workers by source with the ring, codec and link classes.
 *
 * @module
 */

import { Arena, type ArenaMemory } from "../shared_memory/arena.ts";
import { Bell } from "../shared_memory/bell.ts";
import { Encoder } from "../shared_memory/codec.ts";
import { ClaimPolicy } from "../shared_memory/claim_policy.ts";
import { type FilterConfig, FilterRuntime } from "./filter_runtime.ts";
import {
  type Branch,
  InputLink,
  type InputMode,
  OutputPort,
} from "../shared_memory/link.ts";
import { Ring } from "../shared_memory/ring.ts";
import { StageStatus } from "../shared_memory/status.ts";
import type { ShippedTarget } from "../stage/target.ts";
import { type Instance, type Run, TargetLoader } from "./target_loader.ts";
import { type BatchHost, BatchRunner, type SendTasks } from "./batch_runner.ts";
import {
  ConcurrentRunner,
  type TaskHost,
  type TaskSlot,
} from "./concurrent_runner.ts";
import { IdleWait } from "./idle_wait.ts";
import { WorkerFigures } from "./figures.ts";
import { WorkerScope } from "./scope.ts";

export type { WorkerMessage } from "./scope.ts";

/** What a worker is told when it starts. */
export interface WorkerConfig {
  stage: string;
  index: number;
  target: ShippedTarget;
  ordered: boolean;
  args: unknown[];
  disableResult: boolean;
  doStopTask: boolean;
  input: {
    control: SharedArrayBuffer;
    rings: SharedArrayBuffer[];
    mode: InputMode;
  };
  outputs: Branch[];
  /** How many times to look for input before sleeping. */
  spin: number;
  /** What a failed task does: fail the pipeline, or drop the task and go on (and report it, for an onError callback). */
  onError: "fail" | "skip" | "report";
  /** The stage's status block (StageStatus) and its number of workers. */
  status: SharedArrayBuffer;
  size: number;
  /** Record when each task starts (the stage has a taskTimeout). */
  timed: boolean;
  /**
   * The most tasks a worker claims at once while tasks are fast: 1 keeps a
   * lost worker to the one task it runs; a small number in a stage of several
   * workers bounds what a sudden slow task can hold back from the others.
   */
  maxClaim: number;
  /** How many workers held this place before (0, or more after restarts). */
  generation: number;
  /** The most tasks this worker runs at once (the stage's `concurrency`). */
  concurrency: number;
  /** The stage's taskTimeout (ms), or Infinity. */
  taskTimeout: number;
  /** When the main thread spawned this worker (ms since the epoch). */
  spawnedAt: number;
  /**
   * Tasks a lost worker held, in order, which this replacement must close,
   * and one past the last task it claimed.
   */
  recover: { tasks: number[]; to: number } | null;
  /** The stage is a FilterStage: run the built-in filter, not a target. */
  filter: FilterConfig | null;
  /** The pipeline's arena and this worker's place in it, or null for none. */
  arena: { memory: ArenaMemory; holder: number } | null;
}

/** Runs one stage worker. */
export class WorkerRuntime implements TaskHost, BatchHost {
  /** Starts the worker described by `config`; reports every failure. */
  static async start(config: WorkerConfig): Promise<void> {
    try {
      await new WorkerRuntime(config).run();
    } catch (error) {
      // A killed worker unwinds with an error of its own; nothing to report.
      if (!Bell.killed()) throw error;
    } finally {
      // A terminate() that came while this worker slept in Atomics.wait is
      // lost (Deno), so a killed worker ends itself.
      if (Bell.killed()) WorkerScope.close();
    }
  }

  readonly config: WorkerConfig;
  readonly input: InputLink;
  readonly output: OutputPort;
  readonly status: StageStatus;
  readonly figures: WorkerFigures;
  readonly idleWait: IdleWait;
  /** The loop of a worker that runs several tasks at once, if it does. */
  readonly #runner: ConcurrentRunner | null;
  /** The loop of a worker whose target takes its tasks in batches, if it does (set once loaded). */
  #batches: BatchRunner | null = null;
  #seq = 0;
  /** One past the last task whose results were all written. */
  #finished = 0;
  #claimMax = 1;
  /** Results a timed task put with `putResult()`, written at its end. */
  #held: Uint8Array[] = [];
  /** The pipeline's arena (null for none), and the running task's references to it (null for none). */
  readonly arena: Arena | null;
  #refs: number[] | null = null;
  /** A task runs (for `alloc`). */
  #inTask = false;
  /** This worker's words in the stage's status block, found once. */
  readonly #slot: {
    seq: number;
    from: number;
    to: number;
    taskState: number;
    skips: number;
  };

  constructor(config: WorkerConfig) {
    this.config = config;
    this.input = new InputLink(
      config.input.control,
      config.input.rings,
      config.input.mode,
    );
    this.output = new OutputPort(config.outputs);
    this.status = new StageStatus(config.status, config.size);
    this.figures = new WorkerFigures(this.status, config.index);
    this.idleWait = new IdleWait(this.input, config.spin);
    this.#runner = config.concurrency > 1 ? new ConcurrentRunner(this) : null;
    this.arena = config.arena === null
      ? null
      : new Arena(config.arena.memory, config.arena.holder);
    if (this.arena !== null) {
      this.input.useArena(this.arena);
      this.output.useArena(this.arena);
    }
    Bell.kill = {
      words: this.status.words,
      index: this.status.at(config.index, StageStatus.KILL),
      generation: config.generation,
    };
    const at = (word: number) => this.status.at(config.index, word);
    this.#slot = {
      seq: at(StageStatus.SEQ),
      from: at(StageStatus.FROM),
      to: at(StageStatus.TO),
      taskState: at(StageStatus.TASK_STATE),
      skips: at(StageStatus.SKIPS),
    };
    // What is published is safe; a replacement must close what is not.
    const from = this.#slot.from;
    const to = this.#slot.to;
    this.output.onPublish = () => {
      this.#runner?.published();
      // The tasks claimed and not finished: a batch's stamps are consecutive.
      this.figures.write(
        this.#runner?.running ?? this.#batches?.running ??
          this.status.words[to]! - this.#finished,
        this.output.blockedMs,
      );
      // Atomic, after the skip counts it covers (see SkipReports).
      Atomics.store(this.status.words, from, this.#finished);
    };
  }

  /** Loads the target, runs every task, then passes the stop downstream. */
  async run(): Promise<void> {
    WorkerScope.watchExits();
    let run: Run;
    let init: () => unknown;
    let instance: Instance;
    try {
      [run, init, instance] = await TargetLoader.load(
        this.config.stage,
        this.config.target,
        this.config.ordered,
        this.config.args,
      );
    } catch (error) {
      return this.#report("load", undefined, error);
    }
    const loaded = performance.now();
    this.figures.loaded(loaded, this.config.spawnedAt);
    try {
      await init();
    } catch (error) {
      return this.#report("init", undefined, error);
    }
    this.figures.ready(loaded, performance.now());
    WorkerScope.post({ type: "ready" });
    (globalThis as Record<symbol, unknown>)[Symbol.for("mpipe.putResult")] = (
      result: unknown,
    ) => this.#putResult(result);
    (globalThis as Record<symbol, unknown>)[Symbol.for("mpipe.alloc")] = (
      n: number,
    ) => this.#alloc(n);
    // For tests and benchmarks: the bytes this worker's codec copied.
    (globalThis as Record<symbol, unknown>)[Symbol.for("mpipe.copiedBytes")] =
      () => Encoder.copiedBytes;
    if (this.config.recover !== null) this.#recover(this.config.recover);
    const filter = this.config.filter === null
      ? null
      : new FilterRuntime(this.config.filter, this.arena);
    if (filter !== null) run = (task) => filter.doTask(task);
    // A stand-in that sends its tasks elsewhere takes them in batches.
    const send = instance?.[Symbol.for("mpipe.sendTasks")];
    if (typeof send === "function") this.#batches = new BatchRunner(this);
    try {
      await (this.#batches !== null
        ? this.#batches.run((send as SendTasks).bind(instance))
        : this.#runner !== null
        ? this.#runner.run(run)
        : this.#loop(run));
      // A filter lets its sub-pipelines finish before or after its own stop.
      if (filter?.config.doStopTask) filter.finish();
      if (this.config.doStopTask) {
        const seq = this.input.nextOwnSeq();
        this.#claimed(seq, seq + 1);
        // The stop task is no task that reached the stage: not counted.
        const tasks = this.figures.tasks;
        await this.#runTask(run, null, seq);
        this.figures.tasks = tasks;
      }
    } catch (error) {
      return this.#report(
        "task",
        this.#runner?.failedTask ?? this.#batches?.failedTask ?? this.#seq,
        error,
      );
    }
    this.figures.exiting(performance.now());
    this.output.publish();
    this.output.putEmpty(Ring.STOP, 0);
    this.output.publish();
    if (filter !== null && !filter.config.doStopTask) filter.finish();
    WorkerScope.post({ type: "exit" });
  }

  async #loop(run: Run): Promise<void> {
    const input = this.input;
    const values: unknown[] = [];
    const seqs: number[] = [];
    for (;;) {
      // The only claim call site: the hot path is compiled once, not inlined
      // again into the idle path.
      const count = input.claim(values, seqs, this.#claimMax);
      if (count === 0) {
        this.idleWait.idle();
        continue;
      }
      if (count < 0) return;
      this.idleWait.reset();
      const started = performance.now();
      this.figures.began(started);
      this.#claimed(seqs[0]!, seqs[count - 1]! + 1);
      // How long the batch's first async task awaited (timers, I/O), -1 for
      // none: a sample per batch, not a clock read per task (see insights).
      let awaited = -1;
      for (let i = 0; i < count; i++) {
        const task = values[i];
        values[i] = undefined;
        input.taskStarted();
        const done = this.#runTask(run, task, seqs[i]!);
        if (done === undefined) continue;
        if (awaited >= 0) {
          await done;
          continue;
        }
        const from = performance.now();
        await done;
        awaited = performance.now() - from;
      }
      // Time the batch, not each task: two clock reads per batch.
      const ended = performance.now();
      if (awaited >= 0) {
        this.figures.awaited(Math.min(awaited * count, ended - started));
      }
      const perTask = (ended - started) / count;
      this.figures.batch(started, ended, perTask, seqs[0]!, count);
      // Claim one task at a time when tasks are slow, so that idle workers
      // can take the rest; claim many when they are fast, to save on locking.
      this.#claimMax = perTask > ClaimPolicy.SLOW_TASK_MS
        ? 1
        : Math.min(this.#claimMax * 2, this.config.maxClaim);
      this.output.publish();
    }
  }

  /**
   * Runs one task and writes its results; returns a Promise only if the task
   * is asynchronous, so synchronous tasks never pay for an `await`. A task
   * that fails is dropped under onError "skip", and rethrown under "fail".
   */
  #runTask(run: Run, task: unknown, seq: number): Promise<void> | undefined {
    this.begin(seq);
    this.#inTask = true;
    if (this.arena !== null) this.#refs = this.arena.takeTask(task);
    let result: unknown;
    try {
      result = run(task);
    } catch (error) {
      return this.#failed(error);
    }
    if (WorkerScope.isThenable(result)) {
      return Promise.resolve(result).then(
        (value) => this.#succeeded(value),
        (error) => this.#failed(error),
      );
    }
    this.#succeeded(result);
  }

  // ---- TaskHost: what the concurrent runner calls ----

  begin(seq: number): void {
    this.#seq = seq;
    // Plain: read for the watchdog's message after the task state's store.
    this.status.words[this.#slot.seq] = seq;
    if (this.config.timed) this.#startTimed();
  }

  endSync(): number {
    if (!this.config.timed) return 0;
    this.#endTimed();
    return this.figures.taskElapsed();
  }

  takeRefs(task: unknown): number[] | null {
    return this.arena === null ? null : this.arena.takeTask(task);
  }

  finish(slot: TaskSlot): void {
    this.#seq = slot.seq;
    this.#held = slot.held;
    this.#refs = slot.refs;
    if (slot.ok) this.#succeeded(slot.value, false);
    else this.#failed(slot.value, false);
  }

  claimedTo(to: number): void {
    this.status.words[this.#slot.to] = to;
  }

  resumeAt(seq: number): void {
    this.#finished = seq;
  }

  publish(): void {
    this.output.publish();
  }

  finishEncoded(seq: number, records: Uint8Array[] | null, error: unknown) {
    this.#seq = seq;
    if (records === null) return this.#failed(error, false);
    if (records.length === 0) return this.#succeeded(null, false);
    if (!this.config.disableResult) {
      const last = records.length - 1;
      for (let i = 0; i < last; i++) {
        this.output.putEncoded(records[i]!, Ring.DATA, seq);
      }
      this.output.putEncoded(
        records[last]!,
        this.config.ordered ? Ring.DATA | Ring.LAST : Ring.DATA,
        seq,
      );
      this.figures.results += records.length;
    }
    this.#finished = seq + 1;
    this.figures.tasks++;
  }

  // ---- the end of a task ----

  #succeeded(result: unknown, timed = this.config.timed): void {
    if (timed) {
      this.#endTimed();
      // It ran too long, though it ended before the watchdog saw it (a busy
      // main thread looks late): a timed-out task all the same.
      const elapsed = this.figures.taskElapsed();
      if (elapsed > this.config.taskTimeout) {
        this.#held.length = 0;
        return this.#failed(
          new DOMException(
            `task ${this.#seq} ran longer than its taskTimeout of ${this.config.taskTimeout} ms (${
              Math.round(elapsed)
            } ms)`,
            "TimeoutError",
          ),
          false,
        );
      }
    }
    try {
      this.#putHeld();
      this.#finish(result);
    } catch (error) {
      // The result could not be cloned: a task error like any other.
      this.#failed(error, false);
      return;
    }
    this.#finished = this.#seq + 1;
    this.figures.tasks++;
    this.#endTask();
  }

  /** The task ended: its buffers on the arena go back, but for those it put on. */
  #endTask(): void {
    this.#inTask = false;
    const refs = this.#refs;
    if (refs === null) return;
    this.#refs = null;
    // A worker whose place was taken writes nothing: its replacement
    // releases what it held.
    Bell.checkKilled();
    this.arena!.releaseAll(refs);
  }

  /** `this.alloc(n)` in a task: a view on the arena, or an ordinary array when it has no room. */
  #alloc(n: number): Uint8Array {
    Bell.checkKilled();
    if (typeof n !== "number" || !Number.isInteger(n) || n < 0) {
      throw new RangeError(
        `alloc: 'n' must be a non-negative integer, got ${String(n)}`,
      );
    }
    const slot = this.#runner?.current;
    if (slot === null || (slot === undefined && !this.#inTask)) {
      throw new Error(
        "alloc() was called outside doTask(), or after an await in a stage with concurrency above 1, where it cannot tell which task it belongs to: call it in doTask(), before the first await",
      );
    }
    const arena = this.arena;
    const view = arena?.tryAlloc(n) ?? null;
    if (view === null) {
      // Full (or no arena): a worker never waits for space, which stages
      // downstream that wait themselves could hold for ever.
      if (arena !== null) Atomics.add(arena.header, Arena.FALLBACKS, 1);
      return new Uint8Array(n);
    }
    const start = arena!.startOf(view);
    if (slot !== undefined) (slot.refs ??= []).push(start);
    else (this.#refs ??= []).push(start);
    return view;
  }

  #failed(error: unknown, timed = this.config.timed): undefined {
    Bell.checkRevoked();
    if (timed) this.#endTimed();
    if (
      this.config.onError === "fail" ||
      (this.config.target.kind === "source" &&
        TargetLoader.isOwnMissingName(error))
    ) {
      throw error;
    }
    this.#putHeld();
    // The main thread reads the counts at any time: atomic adds, not stores.
    // The slot's count is raised before the skip is reported, so the main
    // thread knows when a report is still on its way (see SkipReports). A
    // skipped task is counted there alone, not in `figures.tasks`.
    Atomics.add(this.status.words, StageStatus.SKIPPED, 1);
    Atomics.add(this.status.words, this.#slot.skips, 1);
    if (this.config.ordered && !this.config.disableResult) {
      this.output.putEmpty(Ring.END | Ring.LAST, this.#seq);
    }
    this.#finished = this.#seq + 1;
    // Only a callback needs the error: a skip without one sends nothing.
    if (this.config.onError === "report") {
      WorkerScope.postError({ type: "skipped", task: this.#seq, error });
    }
    this.#endTask();
  }

  /** Records the claimed tasks [from, to), for whoever replaces a lost worker. */
  #claimed(from: number, to: number): void {
    const { words } = this.status;
    this.figures.claimed(to - from);
    // The main thread reads the slot once this worker is lost, after it
    // stopped writing; SkipReports reads FROM at any time (so: atomic).
    words[this.#slot.to] = to;
    Atomics.store(words, this.#slot.from, from);
    this.#finished = from;
  }

  #startTimed(): void {
    this.figures.taskStarted();
    // The start time first, then the state: the watchdog reads the time only
    // after it sees RUNNING.
    Atomics.store(
      this.status.words,
      this.#slot.taskState,
      StageStatus.taskState(this.config.generation, StageStatus.RUNNING),
    );
  }

  /**
   * Ends a timed task. If the main thread already took it over (it ran too
   * long), a replacement owns this worker's place: this one gives it up and
   * unwinds without writing anything more.
   */
  #endTimed(): void {
    // The compare-exchange races the watchdog's: exactly one of them wins.
    // Both values carry this worker's generation, so it cannot match a
    // replacement's running task.
    const running = StageStatus.taskState(
      this.config.generation,
      StageStatus.RUNNING,
    );
    if (
      Atomics.compareExchange(
        this.status.words,
        this.#slot.taskState,
        running,
        StageStatus.taskState(this.config.generation, StageStatus.IDLE),
      ) === running
    ) return;
    Bell.revoke();
    Bell.checkRevoked();
  }

  /**
   * Writes the results a task put with `putResult()` while timed, or while
   * running among others: they wait until its end (for a timed task, until
   * its end has won the race against the watchdog, so that a task taken over
   * never writes into rings its replacement owns).
   */
  #putHeld(): void {
    const held = this.#held;
    if (held.length === 0) return;
    for (let i = 0; i < held.length; i++) {
      this.output.putEncoded(held[i]!, Ring.DATA, this.#seq);
    }
    this.figures.results += held.length;
    held.length = 0;
  }

  /** Closes the tasks a lost worker held, so an ordered merge does not wait for them. */
  #recover({ tasks, to }: { tasks: number[]; to: number }): void {
    // The arena buffers the lost worker held go back (it writes no more).
    if (this.arena !== null) this.arena.reap(this.config.arena!.holder);
    if (this.config.ordered && !this.config.disableResult) {
      for (const seq of tasks) this.output.putEmpty(Ring.END | Ring.LAST, seq);
    }
    this.#claimed(to, to);
    this.output.publish();
  }

  #finish(result: unknown): void {
    if (this.config.disableResult) return;
    const hasResult = result !== null && result !== undefined;
    if (hasResult) this.figures.results++;
    if (this.config.ordered) {
      if (hasResult) this.output.put(result, Ring.DATA | Ring.LAST, this.#seq);
      else this.output.putEmpty(Ring.END | Ring.LAST, this.#seq);
    } else if (hasResult) {
      this.output.put(result, Ring.DATA, this.#seq);
    }
  }

  #putResult(result: unknown): void {
    if (this.config.disableResult) return;
    if (this.#runner !== null) {
      const slot = this.#runner.current;
      if (slot === null) {
        throw new Error(
          "putResult() was called after an await in a stage with concurrency above 1, where it cannot tell which task it belongs to: return the result from doTask() instead, or call putResult() before the first await",
        );
      }
      slot.held.push(this.output.encode(result));
      return;
    }
    if (this.config.timed) {
      // Copied now, as putResult() promises; written at the task's end.
      this.#held.push(this.output.encode(result));
      return;
    }
    this.output.put(result, Ring.DATA, this.#seq);
    this.figures.results++;
    // Slow tasks publish each result at once; fast ones publish per batch.
    if (this.#claimMax === 1) this.output.publish();
  }

  #report(
    phase: "load" | "init" | "task",
    task: number | undefined,
    error: unknown,
  ): void {
    // A killed worker says nothing and writes nothing: it is replaced, or
    // the pipeline has ended.
    if (Bell.killed()) return;
    this.output.publish();
    WorkerScope.postError({ type: "error", phase, task, error });
  }
}
