/**
 * The loop each stage worker runs: claim tasks from its link reader, run the
 * target, write results through the link writer, and pass the stop on.
 *
 * Shipped to workers by source with the ring, codec and link classes.
 *
 * @module
 */

import { Dismissal } from "../shared_memory/dismissal.ts";
import { ClaimPolicy } from "../shared_memory/claim_policy.ts";
import { FilterRuntime } from "./filter_runtime.ts";
import { LinkReader } from "../shared_memory/link_reader.ts";
import { LinkWriter } from "../shared_memory/link_writer.ts";
import type { Recovery, WorkerConfig } from "./config.ts";
import { Ring } from "../shared_memory/ring.ts";
import { StageStatus } from "../shared_memory/status.ts";
import { type Instance, type Run, TargetLoader } from "./target_loader.ts";
import { type BatchHost, BatchRunner, type SendTasks } from "./batch_runner.ts";
import {
  ConcurrentRunner,
  type TaskHost,
  type TaskSlot,
} from "./concurrent_runner.ts";
import { IdleWait } from "./idle_wait.ts";
import { ElasticPlace } from "./elastic_place.ts";
import { WorkerFigures } from "./figures.ts";
import { WorkerScope } from "./scope.ts";
import { TaskTimeout } from "./task_timeout.ts";
import { TaskBuffers } from "./task_buffers.ts";
import { Retries } from "./retries.ts";

/** Runs one stage worker. */
export class WorkerRuntime implements TaskHost, BatchHost {
  /** Starts the worker described by `config`; reports every failure. */
  static async start(config: WorkerConfig): Promise<void> {
    try {
      await new WorkerRuntime(config).run();
    } catch (error) {
      // A dismissed worker unwinds with an error of its own; nothing to report.
      if (!Dismissal.dismissed()) throw error;
    } finally {
      // A terminate() that came while this worker slept in Atomics.wait is
      // lost (Deno), so a dismissed worker closes itself.
      if (Dismissal.dismissed()) WorkerScope.close();
    }
  }

  readonly config: WorkerConfig;
  readonly input: LinkReader;
  readonly output: LinkWriter;
  readonly status: StageStatus;
  readonly figures: WorkerFigures;
  readonly idleWait: IdleWait;
  readonly retries: Retries | null;
  /** The stage's taskTimeout, if it has one (`config.timed`). */
  readonly #timeout: TaskTimeout | null;
  /** Its place in an elastic stage; null for a fixed size. */
  readonly #place: ElasticPlace | null;
  /** The loop of a worker that runs several tasks at once (or retries), if it does. */
  readonly #concurrent: ConcurrentRunner | null;
  /** The loop of a worker whose target takes its tasks in batches (a stand-in), if it does (set once loaded). */
  #batches: BatchRunner | null = null;
  #seq = 0;
  /** One past the last task whose results were all written. */
  #finished = 0;
  #claimMax = 1;
  /** The errors of the failing task's attempts, under `retry`. */
  attempts: unknown[] | null = null;
  /** Results a timed task put with `putResult()`, deferred to its end. */
  #deferred: Uint8Array[] = [];
  /** The buffers on the pipeline's arena each task holds. */
  readonly #buffers: TaskBuffers;
  /** This worker's words in the stage's status block, found once. */
  readonly #slot: {
    seq: number;
    from: number;
    to: number;
    skips: number;
  };

  constructor(config: WorkerConfig) {
    this.config = config;
    this.input = new LinkReader(
      config.input.control,
      config.input.rings,
      config.input.mode,
    );
    this.output = new LinkWriter(config.outputs);
    this.status = new StageStatus(config.status, config.size);
    this.figures = new WorkerFigures(this.status, config.index);
    this.#place = ElasticPlace.of(config, this.status);
    this.idleWait = new IdleWait(this.input, config.spin, this.#place);
    this.#buffers = new TaskBuffers(config.arena, this.input, this.output);
    this.#timeout = config.timed
      ? new TaskTimeout(
        this.status,
        config.index,
        config.generation,
        config.taskTimeout,
        this.figures,
      )
      : null;
    // Decided once: a stage without retry runs the plain loop as before.
    this.retries = config.retry === null ? null : new Retries(config.retry);
    this.#concurrent = config.concurrency > 1 || this.retries !== null
      ? new ConcurrentRunner(this)
      : null;
    Dismissal.failureWord = new Int32Array(config.failure);
    Dismissal.killWord = {
      words: this.status.words,
      index: this.status.at(config.index, StageStatus.KILL),
      generation: config.generation,
    };
    const at = (word: number) => this.status.at(config.index, word);
    this.#slot = {
      seq: at(StageStatus.SEQ),
      from: at(StageStatus.FROM),
      to: at(StageStatus.TO),
      skips: at(StageStatus.SKIPS),
    };
    // What is published is safe; a replacement must mark done what is not.
    const { from, to } = this.#slot;
    this.output.onPublish = () => {
      this.#concurrent?.published();
      // The tasks claimed and not finished: a claim's stamps are consecutive.
      this.figures.write(
        this.#batches?.running ?? this.#concurrent?.running ??
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
    this.#buffers.serveAlloc(() => this.#concurrent?.current);
    const recover = this.config.recover;
    if (recover !== null) this.#buffers.recover();
    if (recover !== null && this.retries !== null) {
      this.#concurrent!.recover(recover.tasks, recover.retry, recover.to);
    } else if (recover !== null) this.#recover(recover);
    const filter = this.config.filter === null
      ? null
      : new FilterRuntime(this.config.filter, this.#buffers.arena);
    if (filter !== null) run = (task) => filter.doTask(task);
    // A stand-in that sends its tasks elsewhere takes them in batches.
    const send = instance?.[Symbol.for("mpipe.sendTasks")];
    if (typeof send === "function") this.#batches = new BatchRunner(this);
    try {
      // True: the worker leaves its elastic stage (not at the stop).
      const left =
        await (this.#batches?.run((send as SendTasks).bind(instance)) ??
          this.#concurrent?.run(run) ?? this.#loop(run));
      if (left && this.#place!.leave(this)) return;
      // A filter stops its sub-pipelines before or after its own stop task.
      if (filter?.config.doStopTask) filter.stop();
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
        this.#concurrent?.failedTask ?? this.#batches?.failedTask ?? this.#seq,
        error,
      );
    }
    this.figures.exiting(performance.now());
    this.output.publish();
    this.output.putEmpty(Ring.STOP, 0);
    this.output.publish();
    if (filter !== null && !filter.config.doStopTask) filter.stop();
    WorkerScope.post({ type: "exit", stopped: this.#place?.stopParked() ?? 0 });
  }

  /** Runs tasks until the input ends (false) or the worker leaves its elastic stage (true). */
  async #loop(run: Run): Promise<boolean> {
    const input = this.input;
    const values: unknown[] = [];
    const seqs: number[] = [];
    for (;;) {
      // The only claim call site: the hot path is compiled once, not inlined
      // again into the idle path.
      const count = input.claim(values, seqs, this.#claimMax);
      if (count === 0) {
        if (this.idleWait.idle()) return true;
        continue;
      }
      if (count < 0) return false;
      this.idleWait.reset();
      const started = performance.now();
      this.figures.began(started);
      this.#claimed(seqs[0]!, seqs[count - 1]! + 1);
      // How long the claim's first async task awaited (timers, I/O), -1 for
      // none: a sample per claim, not a clock read per task (see insights).
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
      // Time the claim's tasks, not each task: two clock reads per claim.
      const ended = performance.now();
      if (awaited >= 0) {
        this.figures.awaited(Math.min(awaited * count, ended - started));
      }
      const perTask = (ended - started) / count;
      this.figures.ran(started, ended, perTask, seqs[0]!, count);
      // Claim one task at a time when tasks are slow, so that idle workers
      // can take the rest; claim many when they are fast, to save on locking.
      this.#claimMax = perTask > ClaimPolicy.SLOW_TASK_MS ? 1 : Math.min(
        this.#claimMax * 2,
        this.#place?.maxClaim ?? this.config.maxClaim,
      );
      this.output.publish();
      // Between claims it holds no task: a worker asked to leave its
      // elastic stage may (one blocked downstream is never idle).
      if (this.#place?.betweenClaims()) return true;
    }
  }

  /**
   * Runs one task and writes its results; returns a Promise only if the task
   * is asynchronous, so synchronous tasks never pay for an `await`. A task
   * that fails is dropped under onError "skip", and rethrown under "fail".
   */
  #runTask(run: Run, task: unknown, seq: number): Promise<void> | undefined {
    this.begin(seq);
    this.#buffers.begin(task);
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
    this.#timeout?.watch();
  }

  syncReturned(): number {
    return this.#timeout?.unwatch() ?? 0;
  }

  takeRefs(task: unknown): number[] | null {
    return this.#buffers.take(task);
  }

  finish(slot: TaskSlot): void {
    this.#seq = slot.seq;
    if (slot.closed) {
      return this.#recover({ tasks: [slot.seq], to: -1, retry: [] });
    }
    this.#deferred = slot.deferred;
    this.#buffers.refs = slot.refs;
    this.attempts = slot.errors;
    if (slot.attempt > 1) this.figures.retried(slot.seq, slot.attempt);
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

  // ---- a task's results, or its failure ----

  #succeeded(result: unknown, timed = this.config.timed): void {
    if (timed) {
      const timeout = this.#timeout!;
      // It ran too long, though it returned before the watchdog saw it (a busy
      // main thread looks late): a timed-out task all the same.
      const elapsed = timeout.unwatch();
      if (elapsed > timeout.ms) {
        this.#deferred.length = 0;
        return this.#failed(
          TaskTimeout.error(this.#seq, timeout.ms, elapsed),
          false,
        );
      }
    }
    try {
      this.#putDeferred();
      this.#writeResult(result);
    } catch (error) {
      // The result could not be cloned: a task error like any other.
      return this.#failed(error, false);
    }
    this.#finished = this.#seq + 1;
    this.figures.tasks++;
    this.#buffers.end();
  }

  #failed(error: unknown, timed = this.config.timed): undefined {
    if (Dismissal.resigned) Dismissal.unwind();
    if (timed) this.#timeout!.unwatch();
    if (
      this.config.onError === "fail" ||
      (this.config.target.kind === "source" &&
        TargetLoader.isOwnMissingName(error))
    ) {
      // The other workers stop now, not once the error has unwound to its
      // report (see `Dismissal.fail`).
      Dismissal.fail();
      throw error;
    }
    this.#putDeferred();
    // The main thread reads the counts at any time: atomic adds, not stores.
    // The slot's count is raised before the skip is reported, so the main
    // thread knows when a report is still on its way (see SkipReports). A
    // skipped task is counted there alone, not in `figures.tasks`.
    Atomics.add(this.status.words, StageStatus.SKIPPED, 1);
    Atomics.add(this.status.words, this.#slot.skips, 1);
    if (this.config.ordered && !this.config.disableResult) {
      this.output.putEmpty(Ring.TASK_DONE | Ring.LAST, this.#seq);
    }
    this.#finished = this.#seq + 1;
    // Only a callback needs the error: a skip without one sends nothing.
    if (this.config.onError === "report") {
      WorkerScope.postError({
        type: "skipped",
        task: this.#seq,
        error,
        attempts: this.attempts ?? undefined,
      });
    }
    this.#buffers.end();
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

  /**
   * Writes the results a task put with `putResult()` while timed, or while
   * running among others: they are deferred to its end (for a timed task, until
   * its end has won the race against the watchdog, so that a task taken over
   * never writes into rings its replacement owns).
   */
  #putDeferred(): void {
    const deferred = this.#deferred;
    if (deferred.length === 0) return;
    for (let i = 0; i < deferred.length; i++) {
      this.output.putEncoded(deferred[i]!, Ring.DATA, this.#seq);
    }
    this.figures.results += deferred.length;
    deferred.length = 0;
  }

  /**
   * Marks done the tasks a lost worker held, so an ordered merge does not
   * wait for them (`to` -1: one of them, among those a retrying runner took
   * over).
   */
  #recover({ tasks, to }: Recovery): void {
    if (this.config.ordered && !this.config.disableResult) {
      for (const seq of tasks) {
        this.output.putEmpty(Ring.TASK_DONE | Ring.LAST, seq);
      }
    }
    if (to < 0) return;
    this.#claimed(to, to);
    this.output.publish();
  }

  #writeResult(result: unknown): void {
    if (this.config.disableResult) return;
    const hasResult = result !== null && result !== undefined;
    if (hasResult) this.figures.results++;
    if (this.config.ordered) {
      if (hasResult) this.output.put(result, Ring.DATA | Ring.LAST, this.#seq);
      else this.output.putEmpty(Ring.TASK_DONE | Ring.LAST, this.#seq);
    } else if (hasResult) {
      this.output.put(result, Ring.DATA, this.#seq);
    }
  }

  #putResult(result: unknown): void {
    if (this.config.disableResult) return;
    if (this.#concurrent !== null) {
      const slot = this.#concurrent.putting;
      if (slot === null) {
        throw new Error(
          "putResult() was called after an await in a stage with concurrency above 1, where it cannot tell which task it belongs to: return the result from doTask() instead, or call putResult() before the first await",
        );
      }
      slot.deferred.push(this.output.encode(result));
      return;
    }
    if (this.config.timed) {
      // Copied now, as putResult() promises; written at the task's end.
      this.#deferred.push(this.output.encode(result));
      return;
    }
    this.output.put(result, Ring.DATA, this.#seq);
    this.figures.results++;
    // Slow tasks publish each result at once; fast ones publish per claim.
    if (this.#claimMax === 1) this.output.publish();
  }

  #report(
    phase: "load" | "init" | "task",
    task: number | undefined,
    error: unknown,
  ): void {
    // Nothing is published: the failure word stops the readers downstream.
    // A dismissed worker says nothing (see `WorkerScope.postError`): it is
    // replaced, or the pipeline has ended or failed elsewhere.
    const attempts = (this.#batches ?? this.#concurrent)?.failedAttempts;
    WorkerScope.postError({ type: "error", phase, task, error, attempts });
  }
}
