/**
 * The `Pipeline` users meet: a facade that puts the parts together and hands
 * each call to the part that does it.
 *
 * Where each file of `lib/` runs, and one task's path through them: the
 * README's "How it works".
 *
 * @module
 */

import { PipelineClosedError, StageError } from "./errors.ts";
import { FailureReport, WatchedPromise } from "./main_thread/failure_report.ts";
import { collectStages, pipelineLeaves } from "./stage/graph.ts";
import {
  checkPipelineOptions,
  defaultSpin,
  type PipelineOptions,
  type ProgressOptions,
  type PutOptions,
} from "./main_thread/options.ts";
import { workerOptionsAllowed } from "./stage/permissions.ts";
import { ResultOutput } from "./main_thread/result_output.ts";
import { RunState, type RunView } from "./main_thread/run_state.ts";
import type { GetOptions, Stage } from "./stage/stage.ts";
import type { ClusterRun } from "./stage/cluster.ts";
import { openClusterRuns } from "./main_thread/cluster_runs.ts";
import {
  type AnyStage,
  internalsOf,
  type StageOwner,
  workersOf,
} from "./stage/internals.ts";
import { SkipReports } from "./main_thread/skip_reports.ts";
import { Supervisor } from "./main_thread/supervisor.ts";
import { inspectModules } from "./main_thread/inspect_modules.ts";
import { TaskInput } from "./main_thread/task_input.ts";
import { type FeedOptions, PipelineStreams } from "./features/streams.ts";
import { Wiring } from "./main_thread/wiring.ts";
import { ArenaAccess } from "./main_thread/arena_access.ts";
import { type PipelineStats, StatsReader } from "./features/stats.ts";
import { ProgressDisplay } from "./features/progress.ts";
import { insightsReport } from "./features/insights.ts";
import { ElasticControl } from "./features/elastic.ts";

export type {
  FeedOptions,
  GetOptions,
  PipelineOptions,
  ProgressOptions,
  PutOptions,
};

/** How many pipelines were created without a name: the default names count them. */
let pipelinesCreated = 0;

/** Each pipeline's state, for the dashboard (`lib/dashboard/`), which reads it and changes nothing. */
const runs = new WeakMap<object, RunView>();

/** The state of `pipe` (stop requested, failure, terminated), or undefined for an object that is not a Pipeline. */
export function runOf(pipe: object): RunView | undefined {
  return runs.get(pipe);
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
   * The pipeline's name in the dashboard and the metrics: `options.name`, or
   * `pipeline-1`, `pipeline-2`, … in the order pipelines are created.
   */
  readonly name: string;
  /**
   * Settles once every worker has exited after the stop, or was killed (after
   * a failure or `terminate()`). If a stage failed and no reader (`get`,
   * `results()`, iteration, `readable`) will deliver the failure (none read,
   * or each had seen the end of the leaf it read) and no awaited `put` has,
   * it rejects with the `StageError`. It never counts as an unhandled rejection by itself: it may
   * be awaited long after the failure (see the README on how a failure
   * reaches you). A killed worker stuck in a synchronous loop goes on running
   * (Deno cannot stop it) but no longer touches the pipeline.
   */
  readonly done: Promise<void>;

  readonly #run = new RunState();
  /**
   * Aborted when the run is cut short (terminated or failed), with the
   * reason a feed rejects with: it stops the feeds and the import of
   * `Stage`s' module targets.
   */
  readonly #cutShortController = new AbortController();
  readonly #report = new FailureReport();
  readonly #input: TaskInput;
  readonly #output: ResultOutput;
  readonly #supervisor: Supervisor;
  readonly #arena: ArenaAccess;
  readonly #streams: PipelineStreams<I, O>;
  readonly #stats: StatsReader;
  readonly #progress: ProgressDisplay | null = null;
  /** The runs of its remote stages' clusters, closed before `done` settles. */
  readonly #clusterRuns: ClusterRun[];
  #clusterRunsClosed: Promise<unknown> | null = null;
  /** Its shared memory, until its rings go back to the pool (`#release`). */
  #wiring: Wiring | null;
  /** Every worker is gone and the clusters' runs are closed: `done` settled. */
  #doneSettled = false;
  /** Its readers took every result out of the leaf rings. */
  #leavesEmptied = false;
  #resolveDone!: () => void;
  #rejectDone!: (error: StageError) => void;

  /**
   * Builds and starts every stage reachable from `root`.
   *
   * @param root The first stage: every task put goes to it.
   * @param options The pipeline's options.
   * @throws {TypeError} If `root` is not a stage, a stage belongs to another
   * pipeline, the root is linked from another stage, or an option is unknown.
   * @throws {RangeError} If an option's value is out of range.
   */
  constructor(
    root:
      // Tasks typed `unknown` accept any root stage.
      | (Stage<unknown extends I ? never : I, unknown, unknown> & {
        readonly resultType?: O;
      })
      // Any `O` for a root whose links the types do not show (see Stage's R).
      | Stage<unknown extends I ? never : I, unknown, never>,
    options: PipelineOptions = {},
  ) {
    const { ringBytes, spin, progress, name, threads, arenaBytes, arenaDebug } =
      checkPipelineOptions(options);
    this.name = name ?? `pipeline-${++pipelinesCreated}`;
    runs.set(this, this.#run);
    this.done = WatchedPromise.create((resolve, reject) => {
      this.#resolveDone = resolve;
      this.#rejectDone = reject;
    });
    const stages = collectStages(root);
    checkSandboxes(stages);
    this.#clusterRuns = openClusterRuns(stages);
    const leaves = pipelineLeaves(stages);
    const wiring = this.#wiring = new Wiring(stages, leaves, ringBytes, {
      bytes: arenaBytes,
      debug: arenaDebug,
    });
    this.#arena = new ArenaAccess(wiring.arena, this.#run);
    const arena = this.#arena.arena;
    const workers = stages.reduce((sum, stage) => sum + workersOf(stage), 0);
    const threadSpin = spin ?? defaultSpin(workers + 1);

    const reports = new SkipReports(
      stages,
      (stage, thrown, report) =>
        this.#fail(
          new StageError(
            `its onError callback threw while handling a skipped task: ${
              thrown instanceof Error ? thrown.message : String(thrown)
            }`,
            {
              stage: stage.name,
              worker: report.worker,
              task: report.task,
              cause: thrown,
            },
          ),
        ),
    );
    this.#output = new ResultOutput(
      this.#run,
      this.#report,
      reports,
      leaves,
      wiring.resultBell,
      wiring.failureWord,
      threadSpin,
    );
    this.#input = new TaskInput(
      { control: wiring.rootLink.control, ring: wiring.rootLink.rings[0]! },
      internalsOf(stages[0]!).maxBacklog,
      this.#run,
      this.#report,
      this.#output,
      arena,
    );
    this.#output.pump = this.#input;
    this.#stats = new StatsReader(
      root,
      this.#input,
      this.#output,
      () => this.#arena.stats(),
    );
    if (progress !== null) {
      this.#progress = new ProgressDisplay(() => this.stats(), progress);
    }
    this.#supervisor = new Supervisor(this.#run, wiring.sleepWords, reports, {
      fail: (error) => this.#fail(error),
      allGone: () => {
        elastic.stop();
        this.#settleDone();
      },
      left: (stage, size, idleMs, asked) =>
        elastic.left(stage, size, idleMs, asked),
    });
    const elastic = new ElasticControl(
      stages,
      wiring,
      this.#supervisor,
      threads,
      (stage) => this.#stats.backlogOf(stage),
      (error) =>
        this.#fail(
          error instanceof StageError
            ? error
            : new StageError(`its workers could not be resized: ${error}`, {
              stage: stages[0]!.name,
              cause: error,
            }),
        ),
    );
    this.#stats.watch({
      sizeOf: (stage) => this.#supervisor.sizeOf(stage),
      spansOf: (stage) => this.#supervisor.spansOf(stage),
      log: elastic.log,
    });
    this.#streams = new PipelineStreams(this.#input, this.#output, {
      terminate: () => this.terminate(),
      abort: (reason) => this.#abort(reason),
      cutShort: this.#cutShortController.signal,
    });
    // Leaves are known now, so stage.get() works while workers start.
    const owner: StageOwner = {
      getFrom: (stage, options) => this.#output.get(stage, options),
      resultsFrom: (stage, options) => this.#output.results(stage, options),
    };
    for (const stage of stages) internalsOf(stage).owner = owner;

    const start = () => {
      if (this.#run.cutShort) return;
      this.#output.connect((stage) => {
        const link = wiring.leafLink(stage);
        if (arena !== null) link.useArena(arena);
        return link;
      });
      this.#output.whenEmptied(() => {
        this.#leavesEmptied = true;
        this.#release();
      });
      this.#supervisor.start(stages.map((stage) => ({
        stage,
        configs: wiring.workerConfigs(stage, threadSpin),
      })));
      elastic.start();
    };
    const uninspected = stages.filter((s) =>
      internalsOf(s).ordered === undefined
    );
    if (uninspected.length === 0) {
      try {
        start();
      } catch (error) {
        // Nobody holds this pipeline: stop what started, and say why.
        this.#supervisor.killAll();
        throw error;
      }
    } else {
      // A Stage of a module target: import it (in a worker) to learn its ordering.
      inspectModules(uninspected, this.#cutShortController.signal).then(start)
        .catch((
          error: StageError,
        ) => this.#fail(error));
    }
  }

  /**
   * Puts a task into the pipeline, or the stop request (`null`). Tasks enter
   * in call order even when not awaited; the returned Promise settles once the
   * task is in the root stage's input ring, so awaiting it is the backpressure.
   * Puts that wait for room together settle together, once the last of them
   * has entered, which keeps a waiting task's cost to its encoded bytes:
   * un-awaited puts cost O(1) each at any number waiting. Such a bundle
   * takes the puts made while it waits, until one of them is awaited (at most 4,096
   * small tasks): so awaiting a put also waits for the puts made after it
   * and before the await. A program that puts ahead and then awaits an early
   * put before it reads any result may wait for ever once the pipeline is
   * full: read while you put (`results()` in another async function, or
   * `feed`).
   * The task is copied at the call, as by `structuredClone`: a value that
   * cannot be cloned (a `DataCloneError`), or that encodes to more than
   * 2 GiB - 1 bytes (a `RangeError`), is refused (the Promise rejects) and
   * nothing else is lost.
   * A getter of the task may itself put a task; that one enters first, as
   * with `postMessage`.
   *
   * @param task The task, or `null` to request the stop.
   * @param options Options, such as an `AbortSignal`.
   * @returns A Promise that resolves once the task has entered the pipeline.
   * It rejects with a `DataCloneError` if the task cannot be cloned, with a
   * `PipelineClosedError` after the stop request or `terminate()`, with the
   * `StageError` of a failed pipeline, or with the signal's reason. A put that
   * waited with others settles with them: if the pipeline ends before they
   * all entered, it rejects even when its own task had entered, and that
   * task is dropped (counted in `stats()`) like every task in flight then.
   */
  put(task: I | null, options?: PutOptions): Promise<void> {
    return this.#input.put(task, options);
  }

  /**
   * Requests the stop, like `put(null)`, but may be called again: once the
   * stop request was put, each call returns the same Promise (as
   * `WritableStream.close` users expect), while a second `put(null)` rejects.
   *
   * @returns A Promise that resolves once the stop request has entered the
   * pipeline; it rejects with the `StageError` of a failed pipeline, or a
   * `PipelineClosedError` after `terminate()`.
   */
  close(): Promise<void> {
    return this.#input.close();
  }

  /**
   * A buffer of `n` bytes on the pipeline's arena, shared memory that every
   * stage sees: put it (as a task, or inside one) and it travels as a small
   * handle, not copied; the next stage gets a view on the same memory.
   * Waits while the arena has no room (as `put` waits for room), so keep
   * reading results meanwhile.
   *
   * Ownership: the program holds the buffer until it puts it or gives it
   * back with `free`; putting gives it up (using it afterwards is a bug:
   * its space may already be another buffer's). A worker holds the buffers
   * of its task until the task ends, unless it puts them on in a result; a
   * fork's branches share one buffer, read-only, with a reference count. A
   * result's buffers are the program's once read, until it frees them or
   * puts them again. The space comes back when the last holder is done,
   * and when a holder's worker is lost. In a worker, `this.alloc(n)` makes
   * one (see `TaskWorker.alloc`).
   *
   * @example Send a buffer by reference through two stages
   * ```ts
   * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
   * import assert from "node:assert/strict";
   *
   * const invert = (bytes: Uint8Array) => {
   *   for (let i = 0; i < bytes.length; i++) bytes[i] = 255 - bytes[i]!;
   *   return bytes;
   * };
   * const first = new OrderedStage(invert);
   * first.link(new OrderedStage(invert));
   * const pipe = new Pipeline<Uint8Array, Uint8Array>(first);
   * const bytes = await pipe.alloc(1 << 20);
   * bytes.fill(7);
   * await pipe.put(bytes); // bytes is the pipeline's now
   * await pipe.close();
   * const result = (await pipe.get())!;
   * assert.equal(result[0], 7);
   * pipe.free(result);
   * ```
   *
   * @param n The number of bytes, at most the pipeline option `arenaBytes`.
   * @param options An `AbortSignal` that stops the wait.
   * @returns A Promise of a `Uint8Array` on the arena. It rejects with a
   * `PipelineClosedError` once the pipeline ended, with the signal's reason,
   * with a `RangeError` for a bad `n`, and with a `TypeError` for a pipeline
   * without an arena (`arenaBytes: 0`).
   */
  alloc(n: number, options?: { signal?: AbortSignal }): Promise<Uint8Array> {
    return this.#arena.alloc(n, options?.signal);
  }

  /**
   * Like `alloc`, but at once: throws an `ArenaFullError` if the arena has
   * no room now.
   *
   * @example Allocate, fill, put
   * ```ts
   * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
   * import assert from "node:assert/strict";
   *
   * const pipe = new Pipeline(
   *   new OrderedStage((bytes: Uint8Array) => bytes.reduce((a, b) => a + b)),
   * );
   * const bytes = pipe.allocSync(4);
   * bytes.set([1, 2, 3, 4]);
   * pipe.put(bytes);
   * pipe.put(null);
   * assert.deepEqual(await Array.fromAsync(pipe), [10]);
   * ```
   *
   * @param n The number of bytes, at most the pipeline option `arenaBytes`.
   * @returns A `Uint8Array` on the arena.
   */
  allocSync(n: number): Uint8Array {
    return this.#arena.allocSync(n);
  }

  /**
   * Gives back a buffer on the arena that the program holds: one from
   * `alloc` it did not put, or one it read in a result. An ordinary typed
   * array (a worker's `alloc` gives one when the arena is full) is left to
   * the GC. Throws a `TypeError` for any other (one put or freed already).
   *
   * @example Free a buffer not put
   * ```ts
   * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
   *
   * const pipe = new Pipeline(new OrderedStage((x: number) => x));
   * pipe.free(pipe.allocSync(100));
   * await pipe.close();
   * ```
   *
   * @param view The buffer (or a view into it).
   */
  free(view: ArrayBufferView): void {
    this.#arena.free(view);
  }

  /**
   * Reads the next result of any leaf stage: `null` once the stop request has
   * drained through every stage and every result was read.
   *
   * @param options A timeout or an `AbortSignal`; giving up loses nothing.
   * @returns A Promise of the next result, or of `null` at the end. It
   * rejects with the `StageError` of a failed pipeline, a `TimeoutError`
   * `DOMException` after the timeout, or the signal's reason.
   */
  get(options?: GetOptions): Promise<O | null> {
    return this.#output.get(null, options) as Promise<O | null>;
  }

  /**
   * Iterates over the results until the stop request has drained.
   *
   * @param options A timeout for each result, or an `AbortSignal`.
   * @returns An async iterator of the results; its `next()` rejects as `get`
   * does.
   */
  results(options?: GetOptions): AsyncIterableIterator<O> {
    return this.#output.results(null, options) as AsyncIterableIterator<O>;
  }

  /**
   * Iterates over the results, like `results()`.
   *
   * @returns An async iterator of the results.
   */
  [Symbol.asyncIterator](): AsyncIterableIterator<O> {
    return this.results();
  }

  /**
   * The pipeline's input as a stream: each chunk written is put as a task.
   * Chunks are held and put together, up to 256 at a time (when 256 are
   * held, else at the next macrotask), so that a stream's chunks, which come
   * one per few microtasks, do not wake a worker each; a write waits while
   * the chunks held with it wait for room, so `writer.ready` and `writer.desiredSize` show the room
   * in the pipeline (`pipeTo` never floods memory: at most 256 chunks wait
   * outside it). A chunk that cannot be put (its `DataCloneError`) errors
   * the stream and ends the pipeline with that error. `close()` is the stop request;
   * `abort(reason)` (a source that errors in `pipeTo`) terminates the
   * pipeline and errors `readable` with `reason`, as a `TransformStream`
   * does; `get` and `results()` reject with it too. The stream errors with the
   * `StageError` if the pipeline fails. The same stream every time.
   *
   * @example Pipe a stream of numbers through a pipeline
   * ```ts
   * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
   * import assert from "node:assert/strict";
   *
   * const pipe = new Pipeline(new OrderedStage((x: number) => x * 10));
   * const results = ReadableStream.from([1, 2, 3]).pipeThrough(pipe);
   * assert.deepEqual(await Array.fromAsync(results), [10, 20, 30]);
   * ```
   */
  get writable(): WritableStream<I> {
    return this.#streams.writable;
  }

  /**
   * The pipeline's results as a stream: exactly what `results()` would
   * yield (reading both divides the results between them). It closes once
   * the stop request has drained, and errors with the `StageError` if the
   * pipeline fails; `cancel(reason)` terminates the pipeline and errors
   * `writable` with `reason`. After `terminate()` it closes, as `results()`
   * ends. A slow reader holds the results back in the rings: from its first
   * use, the stream reads ahead at most 256 (and reading it, or only
   * getting it, counts as reading the results: a failure then errors the
   * stream rather than `done`).
   * `for await` over it, and `pipeTo` (without a `signal` or
   * `preventCancel`), read the results as fast as `results()` does (they
   * take them directly while they hold the stream's lock). The same stream
   * every time.
   *
   * @example Read the results as a stream
   * ```ts
   * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
   * import assert from "node:assert/strict";
   *
   * const pipe = new Pipeline(new OrderedStage((x: number) => x + 1));
   * await pipe.feed([1, 2, 3]);
   * assert.deepEqual(await Array.fromAsync(pipe.readable), [2, 3, 4]);
   * ```
   */
  get readable(): ReadableStream<O> {
    return this.#streams.readable;
  }

  /**
   * Puts every item of `source`, in order, taking the next item only when
   * there is room, then the stop request (unless `{ close: false }`).
   *
   * If the source throws (or errors, or is another pipeline that failed),
   * or an item cannot be put (its `DataCloneError`), the feed ends the
   * pipeline with that error, as `pipeTo` aborts its destination: the
   * pipeline is terminated, and every reader (`get`, `results()`, `readable`)
   * rejects with the error rather than wait for the stop request. If the
   * pipeline ends first (it fails, or `terminate()`), the feed stops at once,
   * even while the source is slow to yield, and closes the source (a stream
   * is cancelled). A feed stopped by its `signal` leaves the pipeline open.
   *
   * @param source An iterable, an async iterable or a `ReadableStream` of tasks.
   * @param options `close` (put the stop request at the end, default true)
   * and `signal` (stop feeding and close the source; tasks already put stay).
   * @returns A Promise that resolves once everything has entered the
   * pipeline. After closing the source's iterator, it rejects with the
   * source's error or an item's `DataCloneError` (which cut the run short),
   * with the pipeline's failure, with a `PipelineClosedError` after
   * `terminate()`, or with the signal's reason; with a `TypeError` if
   * `source` or an option is of the wrong type, before it takes anything
   * from the source. Like a `put`'s, its rejection with an error that ended
   * the run never crashes the program by itself: the readers get that error,
   * or it is reported when the program would end.
   *
   * @example Feed an iterable, read the results
   * ```ts
   * import { Pipeline, UnorderedStage } from "@mpipe/mpipe";
   * import assert from "node:assert/strict";
   *
   * const pipe = new Pipeline(new UnorderedStage((x: number) => x * x, 2));
   * const fed = pipe.feed([1, 2, 3, 4]);
   * const results = await Array.fromAsync(pipe);
   * await fed;
   * assert.deepEqual(results.sort((a, b) => a - b), [1, 4, 9, 16]);
   * ```
   */
  feed(
    source: Iterable<I> | AsyncIterable<I> | ReadableStream<I>,
    options?: FeedOptions,
  ): Promise<void> {
    const fed = new WatchedPromise<void>((resolve, reject) => {
      this.#streams.feed(source, options).then(resolve, (error) => {
        reject(error);
        // An error that ended the run (the pipeline's failure, or the
        // source's) reaches the readers, or code that awaits the feed, or
        // else is reported when the program would end: like a put's, this
        // rejection never crashes the program by itself. Any other (a bad
        // argument, the feed's own signal) stays a plain rejection.
        const run = this.#run;
        if (error !== run.failure && error !== run.abortedBy?.reason) return;
        Promise.prototype.then.call(fed, undefined, () => {});
        if (error !== run.failure) this.#report.failed(error);
        if (fed.watched) this.#report.observed();
        else fed.onWatched = () => this.#report.observed();
      });
    });
    return fed;
  }

  /**
   * A snapshot of the pipeline's figures: tasks put and results read, and for
   * every stage (the root first, then in the order tasks reach them) what
   * its workers did and what waits for it. It is read from the shared memory
   * the workers write as they go, and sends them nothing, so it may be taken
   * at any time: while the pipeline runs (the figures may then be a batch
   * stale), after the stop, after `done` (final: every total adds up).
   *
   * @returns The figures of now.
   *
   * @example Every task that reached a stage was done or skipped
   * ```ts
   * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
   * import assert from "node:assert/strict";
   *
   * const pipe = new Pipeline<number, number>(
   *   new OrderedStage((x: number) => x + 1, 2),
   * );
   * for (let i = 0; i < 10; i++) pipe.put(i);
   * pipe.put(null);
   * await Array.fromAsync(pipe);
   * await pipe.done;
   * const { put, read, stages: [stage] } = pipe.stats();
   * assert.deepEqual([put, read], [10, 10]);
   * assert.equal(stage!.tasks + stage!.skipped, stage!.received);
   * assert.deepEqual([stage!.inFlight, stage!.backlog], [0, 0]);
   * ```
   */
  stats(): PipelineStats {
    return this.#stats.snapshot();
  }

  /**
   * A readable report of the run so far (call it after `done` for the whole
   * run): per stage and per worker the start-up, `doInit`, working, blocked
   * and waiting time and their shares; each stage's five slowest tasks; the
   * stage that held the run back, with the figures that show it; and a
   * warning for each stage whose workers worked less than 80% of their time
   * while tasks waited at its input. Its figures are those of `stats()`.
   *
   * @returns The report, lines separated by `\n`.
   *
   * @example The slow stage held the run back
   * ```ts
   * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
   * import assert from "node:assert/strict";
   *
   * const quick = new OrderedStage((x: number) => x + 1, 1, { name: "quick" });
   * const slow = new OrderedStage(async (x: number) => {
   *   await new Promise((resolve) => setTimeout(resolve, 5));
   *   return x;
   * }, 1, { name: "slow" });
   * const pipe = new Pipeline<number, number>(quick.link(slow));
   * for (let i = 0; i < 40; i++) pipe.put(i);
   * pipe.put(null);
   * await Array.fromAsync(pipe);
   * await pipe.done;
   * const report = pipe.insights();
   * assert.match(report, /Bottleneck: stage 'slow' held the run back/);
   * ```
   */
  insights(): string {
    return insightsReport(this.stats());
  }

  /**
   * Stops now: kills every worker; results not yet read are dropped, and
   * waiting `put`s reject with a `PipelineClosedError`. A worker stuck in a
   * synchronous loop keeps its thread (and the process) running until the
   * loop ends: Deno cannot stop it; it no longer touches the pipeline.
   */
  terminate(): void {
    if (this.#run.terminated) return;
    this.#run.terminated = true;
    this.#stats.cutShort("terminate");
    this.#cutShort(
      new PipelineClosedError(
        "The pipeline was terminated before this task entered it",
        undefined,
      ),
    );
    this.#cutShortController.abort(
      this.#run.abortedBy !== null
        ? this.#run.abortedBy.reason
        : new PipelineClosedError(
          "The pipeline was terminated while feed waited for its source: feed stopped and closed the source",
          undefined,
        ),
    );
  }

  /**
   * The input side failed (the writable's abort, a feed's source that
   * threw): terminates the pipeline, and its readers reject with `reason`.
   */
  #abort(reason: unknown): void {
    if (this.#run.cutShort) return;
    this.#run.abortedBy = { reason };
    this.terminate();
  }

  /**
   * Terminates the pipeline if it is still running, and waits for `done`.
   *
   * @returns A Promise that settles as `done` does.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#supervisor.running) this.terminate();
    await this.done;
  }

  #fail(error: StageError): void {
    if (this.#run.cutShort) return;
    this.#run.failure = error;
    this.#stats.cutShort("failure");
    this.#report.failed(error);
    this.#cutShort(error);
    this.#streams.failed(error);
    this.#cutShortController.abort(error);
  }

  /**
   * The run was cut short (failed or terminated): kills every worker,
   * rejects the waiting puts with `reason` and wakes every reader.
   */
  #cutShort(reason: unknown): void {
    // After the end, nothing runs, waits or reads: the rings may be another
    // pipeline's by now.
    if (this.#wiring === null) return;
    this.#supervisor.killAll();
    this.#arena.close();
    this.#input.cutShort(reason);
    this.#output.cutShort();
  }

  /** Settles `done`, once the runs of remote stages' clusters are closed. */
  #settleDone(): void {
    if (this.#clusterRuns.length === 0) return this.#settleDoneNow();
    this.#clusterRunsClosed ??= Promise.allSettled(
      this.#clusterRuns.map(async (run) => await run.close()),
    );
    this.#clusterRunsClosed.then(() => this.#settleDoneNow());
  }

  /**
   * Gives the rings back for the next pipelines once nothing will touch them
   * again: the run ended by its stop, every worker exited by itself, and
   * the readers took every result out of the rings.
   */
  #release(): void {
    if (
      !this.#doneSettled || !this.#leavesEmptied || this.#run.cutShort ||
      !this.#supervisor.allExited
    ) return;
    this.#wiring?.release();
    this.#wiring = null;
  }

  #settleDoneNow(): void {
    this.#doneSettled = true;
    // Nothing can be put any more: allocations, waiting or new, reject.
    this.#arena.close();
    this.#release();
    this.#stats.allGone();
    const progress = this.#progress;
    if (progress !== null) {
      if (this.#run.cutShort) {
        progress.summarize(
          this.#run.failure !== null ? "failed" : "terminated",
        );
      } else {
        // The summary counts the results read: wait for the reader (a
        // second at most) to read those still in the rings.
        const timer = setTimeout(() => progress.summarize("done"), 1000);
        Deno.unrefTimer(timer);
        this.#output.whenReadToEnd(() => {
          clearTimeout(timer);
          progress.summarize("done");
        });
      }
    }
    const failure = this.#run.failure;
    // A reader that saw its end before the failure (a fork's healthy leaf)
    // never sees it: `done` carries it then.
    if (
      failure !== null && !this.#report.wasObserved &&
      !this.#output.stillReading
    ) {
      // Code that awaits `done`, now or later, observes the failure.
      const done = this.done as WatchedPromise<void>;
      if (done.watched) this.#report.observed();
      else done.onWatched = () => this.#report.observed();
      this.#rejectDone(failure);
    } else this.#resolveDone();
  }
}

/**
 * Throws before any worker starts if a stage is sandboxed and Deno will not
 * allow it: a `Worker` with permissions would end the whole process.
 */
function checkSandboxes(stages: AnyStage[]): void {
  const sandboxed = stages.find((stage) =>
    internalsOf(stage).permissions !== "inherit"
  );
  if (sandboxed === undefined || workerOptionsAllowed() !== false) return;
  throw new TypeError(
    `Pipeline: stage '${sandboxed.name}' has 'options.permissions', which needs Deno's --unstable-worker-options flag or "unstable": ["worker-options"] in deno.json; without it Deno would end the whole process (exit code 70)`,
  );
}
