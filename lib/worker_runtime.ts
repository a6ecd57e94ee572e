/**
 * The loop each stage worker runs: claim tasks from the input link, run the
 * target, write results to the output port, and pass the stop on.
 *
 * Shipped to workers by source with the ring, codec and link classes.
 *
 * @module
 */

import { Bell } from "./bell.ts";
import { ClaimPolicy } from "./claim_policy.ts";
import { type FilterConfig, FilterRuntime } from "./filter_runtime.ts";
import { type Branch, InputLink, type InputMode, OutputPort } from "./link.ts";
import { Ring } from "./ring.ts";
import { StageStatus } from "./status.ts";
import type { ShippedTarget } from "./target.ts";
import { type Instance, type Run, TargetLoader } from "./target_loader.ts";
import { WorkerScope } from "./worker_scope.ts";

export type { WorkerMessage } from "./worker_scope.ts";

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
  /** Tasks a lost worker held, which this replacement must close. */
  recover: { from: number; to: number } | null;
  /** The stage is a FilterStage: run the built-in filter, not a target. */
  filter: FilterConfig | null;
}

/**
 * What a worker class may offer under `Symbol.for("mpipe.sendTasks")` to
 * take its tasks in batches, as they are encoded, instead of one `doTask`
 * call each: a remote stage's stand-in (`jetstream/bridge.ts`), which sends
 * them elsewhere. The runtime numbers the tasks it claims 0, 1, 2, ... and
 * hands over those of one turn at once: `count` tasks from number `first`,
 * in `records`, whose first `SEND_HEADER` (16) bytes are free for the
 * stand-in's use, followed by each task's record as the codec encoded it,
 * after its length in LEB128 (7 bits a byte, low first). The buffer is the
 * stand-in's. At most `concurrency` tasks are unsettled at a time. The
 * stand-in settles each task once, in any order, through `settler` (later
 * calls for a task are ignored), and calls `settler.flush()` after a run of
 * them.
 */
export type SendTasks = (
  first: number,
  count: number,
  records: Uint8Array,
  settler: TaskSettler,
) => void;

/** How a batch stand-in settles the tasks it was sent (see `SendTasks`). */
export interface TaskSettler {
  /** Task `task` gave the result encoded in `record` (as the codec does), or none (null). */
  resolve(task: number, record: Uint8Array | null): void;
  /** Task `task` gave several results, encoded, in order. */
  resolveMany(task: number, records: Uint8Array[]): void;
  /** Task `task` failed with `error`: a task error, as if its doTask threw it. */
  reject(task: number, error: unknown): void;
  /** Writes the settled tasks that can be written (in task order for an ordered stage), and publishes them. */
  flush(): void;
}

/** A task in flight in a worker that runs several at once. */
interface TaskSlot {
  seq: number;
  /** It settled: `ok` and `value` say how. */
  done: boolean;
  /** Its results (or its failure) were written. */
  written: boolean;
  ok: boolean;
  value: unknown;
  /** Results it put with `putResult()`, written with its own result. */
  held: Uint8Array[];
  /** Its taskTimeout's timer, if it awaits. */
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** Runs one stage worker. */
export class WorkerRuntime {
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
  #seq = 0;
  /** One past the last task whose results were all written. */
  #finished = 0;
  #claimMax = 1;
  /** Where this worker's figures start in the stage's status block. */
  readonly #figures: number;
  /** Tasks this worker's place has finished (published with each batch). */
  #tasks: number;
  /** Results this worker's place has put (published with each batch). */
  #results: number;
  /** Ms spent running tasks, and waiting for them, by this worker's place. */
  #busyMs: number;
  #idleMs: number;
  /** Ms this worker's place was blocked writing results before this worker. */
  readonly #blockedBase: number;
  /** When the last batch ended (performance.now()), for the idle time. */
  #lastBatchEnd = 0;
  /** The five slowest tasks so far: seq and ms, slowest first. */
  #slowest: { seq: number; ms: number }[] = [];
  /**
   * The tasks in flight (concurrency above 1), in the order they were
   * claimed, from `#head` on: the slots before it were written.
   */
  #inFlight: TaskSlot[] = [];
  #head = 0;
  /** How many tasks are in flight: claimed and not yet written. */
  #running = 0;
  /** An unordered stage's settled tasks not yet written, in the order they settled. */
  #settled: TaskSlot[] = [];
  /** A settle is queued (see `#complete`). */
  #settleQueued = false;
  /**
   * A batch target's tasks (see `#batchLoop`), by number: those from
   * `#kBase` (the oldest not written) to `#kNext`, at `number & #kMask` in
   * each array: its state, value (result or error), input seq and start.
   */
  #batched = false;
  #kBase = 0;
  #kNext = 0;
  #kMask = 0;
  #kState = new Uint8Array(0);
  #kValue: unknown[] = [];
  #kSeq = new Float64Array(0);
  #kStarted = new Float64Array(0);
  /** An unordered stage's tasks settled since the last flush. */
  #kSettled: number[] = [];
  /** The task whose synchronous part runs now, for putResult() (concurrency above 1). */
  #current: TaskSlot | null = null;
  /** A task error to rethrow in the loop (it came in a promise callback). */
  #fatal: { error: unknown; seq: number } | null = null;
  /** Wakes the loop when a task in flight completes. */
  #completion: { promise: Promise<void>; resolve: () => void } | null = null;
  /** Results a timed task put with `putResult()`, written at its end. */
  #held: Uint8Array[] = [];
  // Idle state between claims: spins left, and the armed doorbell's counter.
  #spinLeft = 0;
  #armed = false;
  #counter = 0;
  /** This worker's words in the stage's status block, found once. */
  readonly #slot: {
    seq: number;
    from: number;
    to: number;
    taskState: number;
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
    };
    this.#figures = this.status.figure(config.index, 0);
    // A replacement goes on counting where its place's last worker stopped.
    const figures = this.status.figures;
    this.#tasks = figures[this.#figures + StageStatus.TASKS]!;
    this.#results = figures[this.#figures + StageStatus.RESULTS]!;
    this.#busyMs = figures[this.#figures + StageStatus.BUSY_MS]!;
    this.#idleMs = figures[this.#figures + StageStatus.IDLE_MS]!;
    this.#blockedBase = figures[this.#figures + StageStatus.BLOCKED_MS]!;
    // What is published is safe; a replacement must close what is not. A
    // plain store, read only once this worker is lost (see #claimed).
    const from = this.#slot.from;
    this.output.onPublish = () => {
      this.#writeFigures();
      this.status.words[from] = this.#finished;
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
    const figures = this.status.figures;
    const loaded = performance.now();
    figures[this.#figures + StageStatus.START_MS] = performance.timeOrigin +
      loaded - this.config.spawnedAt;
    try {
      await init();
    } catch (error) {
      return this.#report("init", undefined, error);
    }
    this.#lastBatchEnd = performance.now();
    figures[this.#figures + StageStatus.INIT_MS] = this.#lastBatchEnd - loaded;
    WorkerScope.post({ type: "ready" });
    const globals = globalThis as Record<symbol, unknown>;
    globals[Symbol.for("mpipe.putResult")] = (result: unknown) =>
      this.#putResult(result);
    if (this.config.recover !== null) this.#recover(this.config.recover);
    const filter = this.config.filter === null
      ? null
      : new FilterRuntime(this.config.filter);
    if (filter !== null) run = (task) => filter.doTask(task);
    try {
      const sendTasks = instance?.[Symbol.for("mpipe.sendTasks")];
      await (typeof sendTasks === "function"
        ? this.#batchLoop(
          sendTasks.bind(instance) as SendTasks,
        )
        : this.config.concurrency > 1
        ? this.#concurrentLoop(run)
        : this.#loop(run));
      // A filter lets its sub-pipelines finish before or after its own stop.
      if (filter?.config.doStopTask) filter.finish();
      if (this.config.doStopTask) {
        const seq = this.input.nextOwnSeq();
        this.#claimed(seq, seq + 1);
        await this.#runTask(run, null, seq);
      }
    } catch (error) {
      return this.#report("task", this.#seq, error);
    }
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
        this.#idle();
        continue;
      }
      if (count < 0) return;
      this.#spinLeft = this.config.spin;
      this.#armed = false;
      const started = performance.now();
      this.#claimed(seqs[0]!, seqs[count - 1]! + 1);
      for (let i = 0; i < count; i++) {
        const task = values[i];
        values[i] = undefined;
        input.taskStarted();
        const done = this.#runTask(run, task, seqs[i]!);
        if (done !== undefined) await done;
      }
      // Time the batch, not each task: two clock reads per batch.
      const ended = performance.now();
      const perTask = (ended - started) / count;
      this.#timed(started, ended, perTask, seqs[0]!);
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
    this.#seq = seq;
    // Plain: read for the watchdog's message after the task state's store.
    this.status.words[this.#slot.seq] = seq;
    if (this.config.timed) this.#startTimed();
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

  #succeeded(result: unknown): void {
    // A concurrent worker ends a task's timing after its synchronous part;
    // a batch target's tasks are timed by #timeOutNumbered.
    if (this.config.timed && this.config.concurrency === 1 && !this.#batched) {
      this.#endTimed();
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
    this.#tasks++;
  }

  #failed(error: unknown, timed = this.config.timed): undefined {
    Bell.checkRevoked();
    if (timed) this.#endTimed();
    if (this.config.onError === "fail") throw error;
    this.#putHeld();
    // The main thread reads the count at any time: an atomic add, not a store.
    Atomics.add(this.status.words, StageStatus.SKIPPED, 1);
    if (this.config.ordered && !this.config.disableResult) {
      this.output.putEmpty(Ring.END | Ring.LAST, this.#seq);
    }
    this.#finished = this.#seq + 1;
    this.#tasks++;
    // Only a callback needs the error: a skip without one sends nothing.
    if (this.config.onError === "report") {
      WorkerScope.postError({ type: "skipped", task: this.#seq, error });
    }
  }

  /** Records the claimed tasks [from, to), for whoever replaces a lost worker. */
  #claimed(from: number, to: number): void {
    const { words } = this.status;
    this.status.figures[this.#figures + StageStatus.IN_FLIGHT] = to - from;
    // Plain stores: the main thread reads the slot only once this worker is
    // lost, after it stopped writing (a message or a kill orders them).
    words[this.#slot.to] = to;
    words[this.#slot.from] = from;
    this.#finished = from;
  }

  #startTimed(): void {
    this.status.figures[this.#figures + StageStatus.STARTED] =
      performance.timeOrigin +
      performance.now();
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
   * Writes the results a timed task put with `putResult()`: they wait until
   * its end has won the race against the watchdog, so that a task taken over
   * never writes into rings its replacement owns.
   */
  #putHeld(): void {
    const held = this.#held;
    if (held.length === 0) return;
    for (let i = 0; i < held.length; i++) {
      this.output.putEncoded(held[i]!, Ring.DATA, this.#seq);
    }
    this.#results += held.length;
    held.length = 0;
  }

  /** Closes the tasks a lost worker held, so an ordered merge does not wait for them. */
  #recover({ from, to }: { from: number; to: number }): void {
    if (this.config.ordered && !this.config.disableResult) {
      for (let seq = from; seq < to; seq++) {
        this.output.putEmpty(Ring.END | Ring.LAST, seq);
      }
    }
    this.#claimed(to, to);
    this.output.publish();
  }

  /**
   * Called when a claim found nothing (each batch was published at its end):
   * spins until records may have come. Once the spin is spent it arms the
   * doorbell, so that the next claim is the re-check; when that one finds
   * nothing too, it sleeps. Records a claim cannot take (an ordered merge waiting for
   * another ring) end the spin early, so it still comes to sleep.
   */
  #idle(): void {
    const input = this.input;
    if (this.#armed) {
      this.#armed = false;
      input.sleep(this.#counter);
      return;
    }
    while (this.#spinLeft > 0) {
      this.#spinLeft--;
      if (input.hasData()) return;
    }
    this.#counter = input.arm();
    this.#armed = true;
  }

  /**
   * `#idle` for the concurrent loop: it sleeps in `Atomics.waitAsync`, so
   * that the worker's event loop goes on (an async target's connections and
   * timers) while it waits for tasks.
   */
  async #idleAsync(): Promise<void> {
    const input = this.input;
    if (this.#armed) {
      this.#armed = false;
      await input.sleepAsync(this.#counter);
      return;
    }
    while (this.#spinLeft > 0) {
      this.#spinLeft--;
      if (input.hasData()) return;
    }
    this.#counter = input.arm();
    this.#armed = true;
  }

  #finish(result: unknown): void {
    if (this.config.disableResult) return;
    const hasResult = result !== null && result !== undefined;
    if (hasResult) this.#results++;
    if (this.config.ordered) {
      if (hasResult) this.output.put(result, Ring.DATA | Ring.LAST, this.#seq);
      else this.output.putEmpty(Ring.END | Ring.LAST, this.#seq);
    } else if (hasResult) {
      this.output.put(result, Ring.DATA, this.#seq);
    }
  }

  #putResult(result: unknown): void {
    if (this.config.disableResult) return;
    if (this.config.concurrency > 1) {
      const slot = this.#current;
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
    this.#results++;
    // Slow tasks publish each result at once; fast ones publish per batch.
    if (this.#claimMax === 1) this.output.publish();
  }

  /** Counts a batch's time (busy, and idle since the last one) and notes a slow task. */
  #timed(started: number, ended: number, perTask: number, seq: number): void {
    this.#busyMs += ended - started;
    this.#idleMs += started - this.#lastBatchEnd;
    this.#lastBatchEnd = ended;
    const slowest = this.#slowest;
    if (
      slowest.length === WorkerRuntime.SLOWEST && slowest.at(-1)!.ms >= perTask
    ) {
      return;
    }
    // Rare: a batch slower than the fifth slowest so far.
    slowest.push({ seq, ms: perTask });
    slowest.sort((a, b) => b.ms - a.ms);
    if (slowest.length > WorkerRuntime.SLOWEST) slowest.pop();
    const figures = this.status.figures;
    const at = this.#figures + StageStatus.SLOWEST;
    for (let i = 0; i < slowest.length; i++) {
      figures[at + 2 * i] = slowest[i]!.seq;
      figures[at + 2 * i + 1] = slowest[i]!.ms;
    }
  }

  /** How many slow tasks each worker notes. */
  static readonly SLOWEST = 5;

  /**
   * Writes this worker's counters to its figures: plain stores, once per
   * published batch; a reader sees them a batch late at most.
   */
  #writeFigures(): void {
    const figures = this.status.figures;
    const at = this.#figures;
    figures[at + StageStatus.TASKS] = this.#tasks;
    figures[at + StageStatus.RESULTS] = this.#results;
    figures[at + StageStatus.BUSY_MS] = this.#busyMs;
    figures[at + StageStatus.IDLE_MS] = this.#idleMs;
    figures[at + StageStatus.IN_FLIGHT] = this.#running;
    figures[at + StageStatus.BLOCKED_MS] = this.#blockedBase +
      this.output.blockedMs;
  }

  /**
   * The loop of a worker that runs up to `concurrency` tasks at once: it
   * claims a task only for a free slot (the rings stay the only queue),
   * starts it, and while tasks are in flight it waits with `waitAsync` (for
   * a completion, or for input when a slot is free), so that their promises
   * can settle. With nothing in flight it idles as the plain loop does.
   */
  async #concurrentLoop(run: Run): Promise<void> {
    const input = this.input;
    const values: unknown[] = [];
    const seqs: number[] = [];
    for (;;) {
      this.#throwFatal();
      const free = this.config.concurrency - this.#running;
      let count = 0;
      if (free > 0) {
        count = input.claim(values, seqs, Math.min(free, this.config.maxClaim));
        if (count > 0) {
          this.#spinLeft = this.config.spin;
          this.#armed = false;
          if (this.#running === 0) {
            // Busy from now until nothing is in flight again (see #settle).
            const now = performance.now();
            this.#idleMs += now - this.#lastBatchEnd;
            this.#lastBatchEnd = now;
          }
          this.status.words[this.#slot.to] = seqs[count - 1]! + 1;
          for (let i = 0; i < count; i++) {
            const task = values[i];
            values[i] = undefined;
            input.taskStarted();
            this.#startTask(run, task, seqs[i]!);
          }
          this.#settle();
          continue;
        }
        if (count < 0 && this.#running === 0) return;
      }
      if (this.#running === 0) {
        await this.#idleAsync();
        continue;
      }
      // Tasks in flight: arm the input's bell, look once more, then wait.
      if (count === 0 && free > 0 && !this.#armed) {
        this.#counter = input.arm();
        this.#armed = true;
        continue;
      }
      const armed = this.#armed;
      this.#armed = false;
      this.#completion ??= Promise.withResolvers<void>();
      await (armed
        ? Promise.race([
          this.#completion.promise,
          input.sleepAsync(this.#counter),
        ])
        : this.#completion.promise);
    }
  }

  /** Starts one task of the concurrent loop, up to its first await. */
  #startTask(run: Run, task: unknown, seq: number): void {
    const slot: TaskSlot = {
      seq,
      done: false,
      written: false,
      ok: true,
      value: undefined,
      held: [],
      timer: undefined,
    };
    this.#inFlight.push(slot);
    this.#running++;
    this.#seq = seq;
    this.status.words[this.#slot.seq] = seq;
    // The synchronous part is watched as a plain timed task is; an await
    // past the timeout is caught by a timer of its own.
    if (this.config.timed) this.#startTimed();
    this.#current = slot;
    let result: unknown;
    let ok = true;
    try {
      result = run(task);
    } catch (error) {
      result = error;
      ok = false;
    }
    this.#current = null;
    if (this.config.timed) this.#endTimed();
    if (ok && WorkerScope.isThenable(result)) {
      Promise.resolve(result).then(
        (value) => this.#complete(slot, true, value),
        (error) => this.#complete(slot, false, error),
      );
      if (this.config.taskTimeout !== Infinity) {
        slot.timer = setTimeout(() =>
          this.#complete(
            slot,
            false,
            new DOMException(
              `task ${seq} ran longer than its taskTimeout of ${this.config.taskTimeout} ms`,
              "TimeoutError",
            ),
          ), this.config.taskTimeout);
      }
      return;
    }
    slot.done = true;
    slot.ok = ok;
    slot.value = result;
    if (!this.config.ordered) this.#settled.push(slot);
  }

  /**
   * A task in flight settled: note it, and let the loop write it. Tasks
   * that settle together (a batch of promises resolved in one go) are
   * written together, by one settle queued after their callbacks, and
   * published once.
   */
  #complete(slot: TaskSlot, ok: boolean, value: unknown): void {
    if (slot.done) return; // A late end of a task that timed out.
    clearTimeout(slot.timer);
    slot.done = true;
    slot.ok = ok;
    slot.value = value;
    if (!this.config.ordered) this.#settled.push(slot);
    if (this.#settleQueued) return;
    this.#settleQueued = true;
    queueMicrotask(this.#settleQueuedTasks);
  }

  /** The settle queued by `#complete`, which then wakes the loop. */
  readonly #settleQueuedTasks = (): void => {
    this.#settleQueued = false;
    try {
      this.#settle();
    } catch (error) {
      this.#fatal ??= { error, seq: this.#seq };
    }
    const completion = this.#completion;
    this.#completion = null;
    completion?.resolve();
  };

  /**
   * Writes the settled tasks that may be written: in task order for an
   * ordered stage (a worker's ring must hold its tasks in order), as they
   * settled otherwise. Publishes what it wrote. Each task is looked at once:
   * an ordered stage writes from the oldest task in flight while it is done,
   * an unordered one writes the tasks in the order they settled.
   */
  #settle(): void {
    const inFlight = this.#inFlight;
    let head = this.#head;
    let wrote = false;
    if (this.config.ordered) {
      while (head < inFlight.length && inFlight[head]!.done) {
        this.#write(inFlight[head++]!);
        wrote = true;
      }
    } else {
      const settled = this.#settled;
      for (let i = 0; i < settled.length; i++) this.#write(settled[i]!);
      wrote = settled.length > 0;
      settled.length = 0;
      while (head < inFlight.length && inFlight[head]!.written) head++;
    }
    // Drop the written slots once they are most of the list: each slot is
    // moved at most once on average.
    if (head > 64 && head * 2 > inFlight.length) {
      inFlight.splice(0, head);
      head = 0;
    }
    this.#head = head;
    // The first task not written is where a replacement would resume.
    this.#finished = head < inFlight.length
      ? inFlight[head]!.seq
      : this.status.words[this.#slot.to]!;
    if (this.#running === 0) {
      const now = performance.now();
      this.#busyMs += now - this.#lastBatchEnd;
      this.#lastBatchEnd = now;
    }
    if (wrote) this.output.publish();
  }

  /** Writes one settled task's results (or its failure). */
  #write(slot: TaskSlot): void {
    slot.written = true;
    this.#running--;
    this.#seq = slot.seq;
    this.#held = slot.held;
    if (slot.ok) this.#succeeded(slot.value);
    else this.#failed(slot.value, false);
  }

  /**
   * The loop of a worker whose target takes tasks in batches (see
   * `SendTasks`): it claims tasks for free slots as the concurrent loop
   * does, and hands each turn's tasks to the target at once. Each task's
   * state lives in arrays indexed by its number modulo their length (grown
   * as needed), not in an object and a Promise of its own.
   */
  async #batchLoop(send: SendTasks): Promise<void> {
    this.#batched = true;
    const input = this.input;
    const seqs: number[] = [];
    // Each task's record is copied from the ring as it is, after its
    // length (LEB128: 7 bits a byte, low first).
    const records = {
      bytes: new Uint8Array(1 << 14),
      length: WorkerRuntime.SEND_HEADER,
      add: (bytes: Uint8Array, start: number, length: number) => {
        const needed = records.length + 5 + length;
        if (needed > records.bytes.length) {
          const grown = new Uint8Array(
            Math.max(needed, 2 * records.bytes.length),
          );
          grown.set(records.bytes.subarray(0, records.length));
          records.bytes = grown;
        }
        const out = records.bytes;
        let at = records.length;
        let n = length;
        while (n >= 0x80) {
          out[at++] = (n & 0x7f) | 0x80;
          n >>>= 7;
        }
        out[at++] = n;
        if (length <= 64) {
          // A tiny record (the common case): a loop beats a subarray and set().
          for (let i = 0; i < length; i++) out[at + i] = bytes[start + i]!;
        } else out.set(bytes.subarray(start, start + length), at);
        records.length = at + length;
      },
    };
    const settler: TaskSettler = {
      resolve: (task, record) =>
        this.#settleNumbered(task, WorkerRuntime.DONE, record),
      resolveMany: (task, list) =>
        this.#settleNumbered(task, WorkerRuntime.MANY, list),
      reject: (task, error) =>
        this.#settleNumbered(task, WorkerRuntime.FAILED, error),
      flush: () => this.#flushNumbered(),
    };
    this.#growNumbered(2 * this.config.concurrency);
    const timeout = this.config.taskTimeout;
    const watch = Number.isFinite(timeout)
      ? setInterval(
        () => this.#timeOutNumbered(),
        Math.max(5, Math.min(1000, timeout / 4)),
      )
      : undefined;
    let batch = 0;
    let first = 0;
    try {
      for (;;) {
        this.#throwFatal();
        const free = this.config.concurrency - this.#running;
        let count = 0;
        if (free > 0) {
          // As many as there are free slots: the stand-in sends them on
          // together, and each claim may ring a producer that waits for room.
          count = input.claimRaw(records, seqs, Math.min(free, 4096));
          if (count > 0) {
            this.#spinLeft = this.config.spin;
            this.#armed = false;
            if (this.#running === 0) {
              const now = performance.now();
              this.#idleMs += now - this.#lastBatchEnd;
              this.#lastBatchEnd = now;
            }
            if (batch === 0) first = this.#kNext;
            batch += count;
            this.#growNumbered(this.#kNext + count - this.#kBase);
            const mask = this.#kMask;
            const now = watch === undefined ? 0 : performance.now();
            for (let i = 0; i < count; i++) {
              input.taskStarted();
              const at = this.#kNext++ & mask;
              this.#kState[at] = WorkerRuntime.PENDING;
              this.#kSeq[at] = seqs[i]!;
              this.#kStarted[at] = now;
            }
            this.#running += count;
            this.status.words[this.#slot.to] = seqs[count - 1]! + 1;
            continue;
          }
        }
        if (batch > 0) {
          // The turn's tasks go together: nothing more to claim now. The
          // buffer goes with them; a new one of the same size takes its place.
          const bytes = records.bytes.subarray(0, records.length);
          // Sized for a turn like this one: a buffer grown once for a large
          // turn is not allocated again for every small one.
          records.bytes = new Uint8Array(
            Math.max(1 << 14, records.length + (records.length >> 2)),
          );
          records.length = WorkerRuntime.SEND_HEADER;
          const sent = batch;
          batch = 0;
          send(first, sent, bytes, settler);
          continue;
        }
        if (count < 0 && this.#running === 0) return;
        if (this.#running === 0) {
          await this.#idleAsync();
          continue;
        }
        if (count === 0 && free > 0 && !this.#armed) {
          this.#counter = input.arm();
          this.#armed = true;
          continue;
        }
        const armed = this.#armed;
        this.#armed = false;
        this.#completion ??= Promise.withResolvers<void>();
        await (armed
          ? Promise.race([
            this.#completion.promise,
            input.sleepAsync(this.#counter),
          ])
          : this.#completion.promise);
      }
    } finally {
      clearInterval(watch);
    }
  }

  /** The bytes at the start of a batch's records that are the stand-in's (see `SendTasks`). */
  static readonly SEND_HEADER = 16;

  /** States of a batch target's tasks (see `#batchLoop`). */
  static readonly PENDING = 0;
  static readonly DONE = 1;
  static readonly MANY = 2;
  static readonly FAILED = 3;
  static readonly WRITTEN = 4;

  /** A batch target's task `task` settled as `state` with `value`; written at the next flush. */
  #settleNumbered(task: number, state: number, value: unknown): void {
    if (task < this.#kBase || task >= this.#kNext) return;
    const at = task & this.#kMask;
    if (this.#kState[at] !== WorkerRuntime.PENDING) return;
    this.#kState[at] = state;
    this.#kValue[at] = value;
    if (!this.config.ordered) this.#kSettled.push(task);
  }

  /**
   * Writes the settled tasks of a batch target that may be written, and
   * publishes them: from the oldest while settled for an ordered stage, as
   * they settled for an unordered one. Wakes the loop.
   */
  #flushNumbered(): void {
    const mask = this.#kMask;
    const state = this.#kState;
    let base = this.#kBase;
    const wrote = this.#running;
    try {
      if (this.config.ordered) {
        while (
          base < this.#kNext && state[base & mask] !== WorkerRuntime.PENDING
        ) {
          this.#writeNumbered(base++ & mask);
        }
      } else {
        const settled = this.#kSettled;
        for (let i = 0; i < settled.length; i++) {
          this.#writeNumbered(settled[i]! & mask);
        }
        settled.length = 0;
        while (
          base < this.#kNext && state[base & mask] === WorkerRuntime.WRITTEN
        ) base++;
      }
    } catch (error) {
      this.#fatal ??= { error, seq: this.#seq };
    }
    this.#kBase = base;
    this.#finished = base < this.#kNext
      ? this.#kSeq[base & mask]!
      : this.status.words[this.#slot.to]!;
    if (this.#running === 0) {
      const now = performance.now();
      this.#busyMs += now - this.#lastBatchEnd;
      this.#lastBatchEnd = now;
    }
    if (this.#running !== wrote) this.output.publish();
    const completion = this.#completion;
    this.#completion = null;
    completion?.resolve();
  }

  /** Writes the results (or the failure) of the settled task in slot `at`. */
  #writeNumbered(at: number): void {
    const state = this.#kState[at]!;
    const value = this.#kValue[at];
    this.#kValue[at] = undefined;
    this.#kState[at] = WorkerRuntime.WRITTEN;
    this.#running--;
    this.#seq = this.#kSeq[at]!;
    if (state === WorkerRuntime.FAILED) return this.#failed(value, false);
    let record = value as Uint8Array | null;
    if (state === WorkerRuntime.MANY) {
      const list = value as Uint8Array[];
      record = list.length === 0 ? null : list[list.length - 1]!;
      if (!this.config.disableResult) {
        for (let i = 0; i < list.length - 1; i++) {
          this.output.putEncoded(list[i]!, Ring.DATA, this.#seq);
          this.#results++;
        }
      }
    }
    if (record === null) return this.#succeeded(null);
    if (!this.config.disableResult) {
      this.#results++;
      this.output.putEncoded(
        record,
        this.config.ordered ? Ring.DATA | Ring.LAST : Ring.DATA,
        this.#seq,
      );
    }
    this.#finished = this.#seq + 1;
    this.#tasks++;
  }

  /** Fails the tasks of a batch target that have run longer than the taskTimeout. */
  #timeOutNumbered(): void {
    const now = performance.now();
    const timeout = this.config.taskTimeout;
    let any = false;
    for (let task = this.#kBase; task < this.#kNext; task++) {
      const at = task & this.#kMask;
      if (
        this.#kState[at] === WorkerRuntime.PENDING &&
        now - this.#kStarted[at]! > timeout
      ) {
        this.#settleNumbered(
          task,
          WorkerRuntime.FAILED,
          new DOMException(
            `task ${
              this.#kSeq[at]
            } ran longer than its taskTimeout of ${timeout} ms`,
            "TimeoutError",
          ),
        );
        any = true;
      }
    }
    if (any) this.#flushNumbered();
  }

  /** Makes the numbered tasks' arrays hold at least `span` tasks from the oldest on. */
  #growNumbered(span: number): void {
    if (span <= this.#kState.length) return;
    let size = Math.max(64, this.#kState.length);
    while (size < span) size *= 2;
    const mask = size - 1;
    const state = new Uint8Array(size);
    const value: unknown[] = new Array(size);
    const seq = new Float64Array(size);
    const started = new Float64Array(size);
    for (let task = this.#kBase; task < this.#kNext; task++) {
      const from = task & this.#kMask;
      const to = task & mask;
      state[to] = this.#kState[from]!;
      value[to] = this.#kValue[from];
      seq[to] = this.#kSeq[from]!;
      started[to] = this.#kStarted[from]!;
    }
    this.#kState = state;
    this.#kValue = value;
    this.#kSeq = seq;
    this.#kStarted = started;
    this.#kMask = mask;
  }

  #throwFatal(): void {
    const fatal = this.#fatal;
    if (fatal === null) return;
    this.#seq = fatal.seq;
    throw fatal.error;
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
