/**
 * A pipeline's statistics: what `pipe.stats()` returns, read from the shared
 * memory the workers already write (each stage's `StageStatus`), without
 * sending them a message.
 *
 * What a reader may trust: each worker writes its figures with plain stores
 * once per batch, so a snapshot taken while the pipeline runs may be a batch
 * stale, and figures of different workers (or of a worker and the stage
 * after it) may come from slightly different moments. Once every worker is
 * gone (`done`), the figures are final and every total adds up: what a
 * failure or `terminate()` abandoned (in flight or waiting) is `dropped`,
 * and a run cut short keeps the figures it had when it ended (a killed
 * worker's thread may still write for a moment).
 *
 * @module
 */

import type { ArenaStats } from "../main_thread/arena_access.ts";
import { flowOrder, reachable } from "../stage/graph.ts";
import { type AnyStage, internalsOf, workersOf } from "../stage/internals.ts";
import { StageStatus } from "../shared_memory/status.ts";
import type { PlaceSpan } from "../main_thread/places.ts";
import type { ElasticSize } from "../stage/stage_options.ts";

/**
 * One of the slowest tasks of a worker or a stage.
 *
 * @example The slowest task of a stage
 * ```ts
 * import { OrderedStage, Pipeline, type SlowTask } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline<number, number>(new OrderedStage((x: number) => x));
 * for (let i = 0; i < 3; i++) pipe.put(i);
 * pipe.put(null);
 * await Array.fromAsync(pipe);
 * await pipe.done;
 * const slowest: SlowTask | undefined = pipe.stats().stages[0]!.slowest[0];
 * assert.ok(slowest === undefined || slowest.ms >= 0);
 * ```
 */
export interface SlowTask {
  /** The task's sequence number at the stage's input, as in `StageError.task`. */
  task: number;
  /**
   * Its time in ms: a worker times a batch of tasks it claimed together, and
   * each gets the batch's time per task (a slow task is claimed alone).
   */
  ms: number;
  /** The worker that ran it: its number in the stage. */
  worker: number;
}

/**
 * A task that took more than one attempt (see the stage option `retry`).
 *
 * @example The tasks a stage retried
 * ```ts
 * import { OrderedStage, Pipeline, type TaskAttempts } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline<number, number>(
 *   new OrderedStage((x: number) => x, 1, { retry: 2 }),
 * );
 * await pipe.feed([1, 2]);
 * await Array.fromAsync(pipe);
 * const retried: TaskAttempts[] = pipe.stats().stages[0]!.retried;
 * assert.deepEqual(retried, []);
 * ```
 */
export interface TaskAttempts {
  /** The task's sequence number at the stage's input, as in `StageError.task`. */
  task: number;
  /** The attempts it took, the first included (its last succeeded or failed). */
  attempts: number;
  /** The worker that ran its last attempt: its number in the stage. */
  worker: number;
}

/**
 * A histogram of task durations: how many tasks took up to each bound, in
 * fixed buckets from 10 µs to 10 s. A worker times a batch of tasks it
 * claimed together, and each gets the batch's time per task (as in
 * `slowest`); tasks a stage runs at once (`concurrency` above 1) are not
 * timed one by one and are not counted.
 *
 * @example The tasks of a run, counted by duration
 * ```ts
 * import { OrderedStage, Pipeline, type TaskDurations } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline<number, number>(new OrderedStage((x: number) => x));
 * await pipe.feed([1, 2, 3]);
 * await Array.fromAsync(pipe);
 * await pipe.done;
 * const durations: TaskDurations = pipe.stats().stages[0]!.durations;
 * assert.equal(durations.counts.reduce((sum, n) => sum + n, 0), 3);
 * assert.equal(durations.counts.length, durations.boundsMs.length + 1);
 * ```
 */
export interface TaskDurations {
  /** The buckets' upper bounds in ms, ascending: 0.01 (10 µs) to 10000 (10 s). */
  boundsMs: readonly number[];
  /**
   * Tasks in each bucket: `counts[i]` took more than `boundsMs[i - 1]` and
   * at most `boundsMs[i]`; the last count, more than the last bound.
   */
  counts: number[];
  /** The ms of every task counted, summed. */
  sumMs: number;
}

/**
 * What one worker place of a stage has done. A worker that replaces a lost
 * one goes on counting in its place.
 *
 * @example Per-worker counts add up to the stage's
 * ```ts
 * import { Pipeline, UnorderedStage, type WorkerStats } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline<number, number>(
 *   new UnorderedStage((x: number) => x * 2, 2),
 * );
 * for (let i = 0; i < 10; i++) pipe.put(i);
 * pipe.put(null);
 * await Array.fromAsync(pipe);
 * await pipe.done;
 * const workers: WorkerStats[] = pipe.stats().stages[0]!.workers;
 * assert.equal(workers.reduce((sum, w) => sum + w.tasks, 0), 10);
 * ```
 */
export interface WorkerStats {
  /** Tasks it finished, with a result or without, and did not skip. */
  tasks: number;
  /** Results it put downstream (or out, for a leaf stage). */
  results: number;
  /** Tasks it skipped: by `onError` "skip" or a function, past `taskTimeout`, or held when it was lost. */
  skipped: number;
  /** Tasks it has taken and not yet finished. */
  inFlight: number;
  /** Ms spent running tasks (in `doTask`, or the task function), blocked time included. */
  busyMs: number;
  /** Ms spent waiting for tasks (and, after its last one, for the stop). */
  idleMs: number;
  /** Ms of `busyMs` it was blocked writing results: a full ring or `maxBacklog` downstream. */
  blockedMs: number;
  /**
   * Ms of `busyMs` it awaited its async tasks' Promises, its thread free:
   * timers and I/O (and the code that runs after each await, which is not
   * timed apart). A stage that mostly awaits wants `concurrency`, not more
   * workers.
   */
  awaitingMs: number;
  /** Ms from the worker's spawn to its target being loaded (its latest worker); 0 until then. */
  startMs: number;
  /** Ms its `doInit()` took (its latest worker). */
  initMs: number;
  /** How many times a new worker took its place (`restart`, or a timeout under "skip"). */
  restarts: number;
  /** Retries it started (see the stage option `retry`): of its own failed attempts, and of tasks lost with a worker before it. */
  retries: number;
  /** Tasks quarantined as its workers (for a remote stage: its hosts or their workers) were lost: each had cost the stage its `crashBudget` (counted in `skipped` too). */
  quarantined: number;
  /** Up to five tasks it ended after more than one attempt, the most attempts first. */
  retried: TaskAttempts[];
  /** Its five slowest tasks so far, slowest first. */
  slowest: SlowTask[];
  /** Its tasks counted by duration. */
  durations: TaskDurations;
  /**
   * When workers held this place, in ms since the pipeline was created:
   * one span for a fixed stage's place (a replacement goes on in it), one
   * per worker that joined an elastic stage here; `endMs` is null while it
   * holds the place, and the list is empty for a place no worker held yet.
   */
  spans: { startMs: number; endMs: number | null }[];
}

/**
 * One resizing of an elastic stage, with the figures that drove it: a
 * worker added while tasks waited (`why` gives the backlog and the busy
 * share), or one that left, idle or asked to (for another stage).
 *
 * @example The resizings of a run
 * ```ts
 * import { Pipeline, type Resize, UnorderedStage } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline(
 *   new UnorderedStage((x: number) => x, { min: 0, max: 2 }),
 * );
 * await pipe.feed([1, 2, 3]);
 * await Array.fromAsync(pipe);
 * await pipe.done;
 * const resizes: Resize[] = pipe.stats().resizes;
 * // The stage had no worker: one joined when the tasks arrived.
 * assert.deepEqual([resizes[0]!.from, resizes[0]!.to], [0, 1]);
 * ```
 */
export interface Resize {
  /** The stage's name. */
  stage: string;
  /** Its workers before. */
  from: number;
  /** Its workers after. */
  to: number;
  /** Ms since the pipeline was created. */
  atMs: number;
  /** Why, with the figures: "backlog 3,000, busy 97%", "idle 2,000 ms". */
  why: string;
}

/**
 * What one stage has done, and what waits for it.
 *
 * @example Every task that reached a stage was finished or skipped
 * ```ts
 * import { OrderedStage, Pipeline, type StageStats } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline<number, number>(
 *   new OrderedStage((x: number) => {
 *     if (x === 3) throw new Error("no threes");
 *     return x;
 *   }, 2, { onError: "skip" }),
 * );
 * for (let i = 0; i < 6; i++) pipe.put(i);
 * pipe.put(null);
 * await Array.fromAsync(pipe);
 * await pipe.done;
 * const stage: StageStats = pipe.stats().stages[0]!;
 * assert.deepEqual([stage.received, stage.tasks, stage.skipped], [6, 5, 1]);
 * ```
 */
export interface StageStats {
  /** The stage's name. */
  name: string;
  /**
   * Its number of workers: for an elastic stage, those it has now (the
   * workers that exit at the stop still count; those that left do not).
   */
  size: number;
  /** Its fewest workers so far (`size` for a fixed stage). */
  lowestSize: number;
  /** Its most workers so far (`size` for a fixed stage). */
  highestSize: number;
  /** Its elastic size, or null for a fixed one. */
  elastic: ElasticSize | null;
  /**
   * Whether it runs on a cluster (its `cluster` option): `size` tasks at
   * once there, and `workers` holds its one local stand-in.
   */
  remote: boolean;
  /** The worker hosts that have answered a remote stage's tasks so far, in the order they first did; empty for a local stage. */
  hosts: string[];
  /** Whether it keeps the order of its tasks (false until a `Stage` of a module target is inspected). */
  ordered: boolean;
  /**
   * Tasks that reached it: put into the pipeline (the root), put downstream
   * by the stages linked to it, or passed in by its `FilterStage`.
   */
  received: number;
  /** Tasks its workers finished, with a result or without (the sum over its workers). */
  tasks: number;
  /** Results it put downstream, or out for a leaf (the sum over its workers). */
  results: number;
  /** Tasks it skipped (the sum over its workers); see `Stage.skipped`. */
  skipped: number;
  /** Tasks its workers have taken and not yet finished. */
  inFlight: number;
  /** Tasks waiting at its input, not yet taken: `received` less `tasks`, `skipped` and `inFlight`. */
  backlog: number;
  /**
   * Tasks that reached it and were abandoned when the run ended early (a
   * failure or `terminate()`): in flight or waiting at its input then. It
   * is 0 until `done`; after `done`, `received` = `tasks` + `skipped` +
   * `dropped`, and `inFlight` and `backlog` are 0, however the run ended.
   */
  dropped: number;
  /**
   * Ms its producers (the stages linked to it, its filter, or `put` for the
   * root) waited for room at its input, summed over them: while they wait,
   * its input is full of tasks waiting for it.
   */
  fullMs: number;
  /** Indices in `PipelineStats.stages` of the stages its results go to; empty for a leaf. */
  next: number[];
  /** The index in `PipelineStats.stages` of the `FilterStage` whose sub-pipeline holds it, or null. */
  within: number | null;
  /** Its workers, in worker order. */
  workers: WorkerStats[];
  /** Retries its workers started (see the stage option `retry`). */
  retries: number;
  /** Tasks it quarantined (see the stage option `crashBudget`), counted in `skipped` too. */
  quarantined: number;
  /** Up to five tasks it ended after more than one attempt, over all its workers, the most attempts first. */
  retried: TaskAttempts[];
  /** Its five slowest tasks so far, over all its workers, slowest first. */
  slowest: SlowTask[];
  /** Its tasks counted by duration (the sum over its workers). */
  durations: TaskDurations;
}

/**
 * A snapshot of a pipeline's figures: `pipe.stats()`.
 *
 * @example Totals after a run
 * ```ts
 * import { OrderedStage, Pipeline, type PipelineStats } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const first = new OrderedStage((x: number) => x + 1);
 * const second = new OrderedStage((x: number) => x * 2);
 * const pipe = new Pipeline<number, number>(first.link(second));
 * for (let i = 0; i < 5; i++) pipe.put(i);
 * pipe.put(null);
 * await Array.fromAsync(pipe);
 * await pipe.done;
 * const stats: PipelineStats = pipe.stats();
 * assert.deepEqual([stats.put, stats.read], [5, 5]);
 * assert.deepEqual(stats.stages.map((s) => s.tasks), [5, 5]);
 * ```
 */
export interface PipelineStats {
  /** Ms since the pipeline was created; once every worker is gone, the whole run's, and it no longer grows. */
  elapsedMs: number;
  /** Whether every worker is gone, by its exit or killed (`done` has settled, or is about to): the figures are final. */
  done: boolean;
  /**
   * How the run ended: its stop request drained (`"stop"`), a stage failed
   * (`"failure"`), or `terminate()` (`"terminate"`); null while it runs.
   */
  end: RunEnd | null;
  /** Tasks that entered the pipeline (a `put` still waiting for room has not; the stop request is not counted). */
  put: number;
  /** Results read out of it: by `get`, `results()`, iteration, `readable` (as it reads ahead) or a leaf stage's reads. */
  read: number;
  /** Every stage once: the root first, then in the order tasks reach them; a `FilterStage`'s sub-pipelines right after it. */
  stages: StageStats[];
  /** The resizings of its elastic stages, in order (none without elastic stages). */
  resizes: Resize[];
  /** The arena's use (see `Pipeline.alloc`): all zeros for a pipeline without one. */
  arena: ArenaStats;
}

/**
 * How a run ended: its stop request drained, a stage failed, or
 * `terminate()` was called.
 *
 * @example Tell a terminated run from a finished one
 * ```ts
 * import { OrderedStage, Pipeline, type RunEnd } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline<number, number>(new OrderedStage((x: number) => x));
 * pipe.terminate();
 * await pipe.done;
 * const end: RunEnd | null = pipe.stats().end;
 * assert.equal(end, "terminate");
 * ```
 */
export type RunEnd = "stop" | "failure" | "terminate";

/** What the reader needs of the pipeline's input and output (`TaskInput`, `ResultOutput`). */
export interface StatsSources {
  /** Tasks written to the root's input. */
  readonly entered: number;
  /** Ms `put` waited for room at the root's input. */
  readonly fullMs: number;
  /** Results read. */
  readonly read: number;
}

/** What the reader needs of the pipeline's workers (`Supervisor`, `ElasticControl`). */
export interface WorkerSources {
  sizeOf(stage: AnyStage): { size: number; lowest: number; highest: number };
  spansOf(stage: AnyStage): readonly (readonly PlaceSpan[])[];
  readonly log: readonly Resize[];
}

/** Reads a pipeline's statistics from its stages' status blocks. */
export class StatsReader {
  readonly #stages: AnyStage[];
  readonly #index = new Map<AnyStage, number>();
  readonly #within: (number | null)[];
  readonly #input: Pick<StatsSources, "entered" | "fullMs">;
  readonly #output: Pick<StatsSources, "read">;
  readonly #arena: () => ArenaStats;
  readonly #createdAt = performance.now();
  #doneAt: number | null = null;
  #end: RunEnd | null = null;
  /** A run cut short: its stages' figures when its workers were killed. */
  #final: StageStats[] | null = null;
  /** The workers' sizes and spans, once they start. */
  #workers: WorkerSources | null = null;

  /** Reads the stages of the pipeline rooted at `root`, whose status blocks are allocated. */
  constructor(
    root: AnyStage,
    input: Pick<StatsSources, "entered" | "fullMs">,
    output: Pick<StatsSources, "read">,
    arena: () => ArenaStats,
  ) {
    this.#arena = arena;
    this.#stages = flowOrder(root);
    this.#stages.forEach((stage, i) => this.#index.set(stage, i));
    this.#within = this.#stages.map(() => null);
    this.#input = input;
    this.#output = output;
    // Inner filters come later in the order, so their stages end up theirs.
    this.#stages.forEach((stage, i) => {
      for (const sub of internalsOf(stage).filter?.stages ?? []) {
        for (const inner of reachable(sub, true)) {
          this.#within[this.#index.get(inner)!] = i;
        }
      }
    });
  }

  /** Tasks waiting at `stage`'s input now (see `StageStats.backlog`). */
  backlogOf(stage: AnyStage): number {
    return this.snapshot().stages[this.#index.get(stage)!]!.backlog;
  }

  /** Reads sizes, spans and resizings from `workers` from now on. */
  watch(workers: WorkerSources): void {
    this.#workers = workers;
  }

  /** The run was cut short (`"failure"`, `"terminate"`); the first counts. */
  cutShort(end: RunEnd): void {
    this.#end ??= end;
  }

  /**
   * Every worker is gone (exited after the stop, or killed): the figures are
   * final, and the run's time stops.
   */
  allGone(): void {
    this.#doneAt ??= performance.now();
    this.#end ??= "stop";
    // terminate() does not wait for a killed worker's thread, which may be
    // in the middle of a publish: the figures of a run cut short are those
    // its stages had when it ended, whatever such a worker still writes.
    if (this.#end !== "stop") this.#final ??= this.#stageFigures();
  }

  /** A snapshot of every figure (see the module's note on staleness). */
  snapshot(): PipelineStats {
    const done = this.#doneAt !== null;
    const elapsedMs = (this.#doneAt ?? performance.now()) - this.#createdAt;
    return {
      elapsedMs,
      done,
      end: this.#end,
      put: this.#input.entered,
      read: this.#output.read,
      stages: this.#final === null
        ? this.#stageFigures()
        : structuredClone(this.#final),
      resizes: this.#workers?.log.map((resize) => ({ ...resize })) ?? [],
      arena: this.#arena(),
    };
  }

  /** Every stage's figures now, with what reached each and what a run cut short dropped. */
  #stageFigures(): StageStats[] {
    const done = this.#doneAt !== null;
    // Workers stamp their state in ms since the epoch; after the end, no
    // time is going on.
    const now = done ? null : performance.timeOrigin + performance.now();
    const stages = this.#stages.map((stage, i) => this.#stage(stage, i, now));
    // Once the workers of a run cut short are gone, whatever was
    // in flight or waiting is abandoned for good.
    const abandoned = done && this.#end !== "stop";
    // What reached each stage: what the stages before it put out, which
    // come before it in the order.
    this.#stages.forEach((stage, i) => {
      const previous = internalsOf(stage).previous;
      const figures = stages[i]!;
      if (i === 0) figures.received = this.#input.entered;
      else if (previous.length > 0) {
        figures.received = previous.reduce(
          (sum, p) => sum + stages[this.#index.get(p)!]!.results,
          0,
        );
      }
      const settled = figures.tasks + figures.skipped;
      if (abandoned) {
        // What a killed worker published in its last batch may be missing
        // from its `results`; what this stage settled certainly reached it.
        figures.received = Math.max(figures.received, settled);
        figures.dropped = figures.received - settled;
        figures.inFlight = 0;
        for (const worker of figures.workers) worker.inFlight = 0;
      }
      figures.backlog = Math.max(
        0,
        figures.received - settled - figures.inFlight - figures.dropped,
      );
    });
    stages[0]!.fullMs += this.#input.fullMs;
    return stages;
  }

  #stage(stage: AnyStage, index: number, now: number | null): StageStats {
    const state = internalsOf(stage);
    const status = state.status!;
    const spans = this.#workers?.spansOf(stage) ?? [];
    const workers = Array.from(
      { length: workersOf(stage) },
      (_, i) => workerStats(status, i, now, spans[i] ?? [], this.#createdAt),
    );
    const sizes = this.#workers?.sizeOf(stage) ??
      { size: stage.size, lowest: stage.size, highest: stage.size };
    const elastic = state.standIn === null ? state.elastic : null;
    const sum = (
      key:
        | "tasks"
        | "results"
        | "skipped"
        | "inFlight"
        | "retries"
        | "quarantined",
    ) => workers.reduce((total, worker) => total + worker[key], 0);
    let fullMs = 0;
    for (let i = StageStatus.FULL_MS; i < status.stageFigures.length; i++) {
      fullMs += status.stageFigures[i]!;
    }
    return {
      name: stage.name,
      size: elastic === null ? stage.size : sizes.size,
      lowestSize: elastic === null ? stage.size : sizes.lowest,
      highestSize: elastic === null ? stage.size : sizes.highest,
      elastic: elastic === null ? null : { min: elastic.min, max: stage.size },
      remote: state.cluster !== null,
      hosts: [...state.hosts],
      ordered: state.ordered === true,
      // A sub-pipeline's root counts what its filter passed in; the others
      // are counted by the caller.
      received: status.stageFigures[StageStatus.RECEIVED]!,
      tasks: sum("tasks"),
      results: sum("results"),
      skipped: sum("skipped"),
      inFlight: sum("inFlight"),
      backlog: 0,
      dropped: 0,
      fullMs,
      next: state.next.map((next) => this.#index.get(next)!),
      within: this.#within[index]!,
      workers,
      retries: sum("retries"),
      quarantined: sum("quarantined"),
      retried: workers.flatMap((worker) => worker.retried)
        .sort((a, b) => b.attempts - a.attempts || a.task - b.task)
        .slice(0, StageStatus.SLOWEST_PAIRS),
      slowest: workers.flatMap((worker) => worker.slowest)
        .sort((a, b) => b.ms - a.ms)
        .slice(0, StageStatus.SLOWEST_PAIRS),
      durations: {
        boundsMs: StageStatus.DURATION_BOUNDS_MS,
        counts: StageStatus.DURATION_BOUNDS_MS.concat(Infinity).map((_, i) =>
          workers.reduce((sum, worker) => sum + worker.durations.counts[i]!, 0)
        ),
        sumMs: workers.reduce((sum, w) => sum + w.durations.sumMs, 0),
      },
    };
  }
}

/**
 * Worker place `index`'s figures; `now` (ms since the epoch) adds the time
 * since it began working or waiting, or null once the pipeline is done.
 */
function workerStats(
  status: StageStatus,
  index: number,
  now: number | null,
  spans: readonly PlaceSpan[],
  createdAt: number,
): WorkerStats {
  const figure = (f: number) => status.figures[status.figure(index, f)]!;
  const inFlight = figure(StageStatus.IN_FLIGHT);
  let busyMs = figure(StageStatus.BUSY_MS);
  let idleMs = figure(StageStatus.IDLE_MS);
  const since = figure(StageStatus.SINCE);
  if (now !== null && since > 0) {
    const ongoing = Math.max(0, now - since);
    if (inFlight > 0) busyMs += ongoing;
    else idleMs += ongoing;
  }
  const slowest: SlowTask[] = [];
  for (let pair = 0; pair < StageStatus.SLOWEST_PAIRS; pair++) {
    const task = figure(StageStatus.SLOWEST + 2 * pair);
    if (task < 0) continue;
    slowest.push({
      task,
      ms: figure(StageStatus.SLOWEST + 2 * pair + 1),
      worker: index,
    });
  }
  const retried: TaskAttempts[] = [];
  for (let pair = 0; pair < StageStatus.SLOWEST_PAIRS; pair++) {
    const task = figure(StageStatus.RETRIED + 2 * pair);
    if (task < 0) continue;
    retried.push({
      task,
      attempts: figure(StageStatus.RETRIED + 2 * pair + 1),
      worker: index,
    });
  }
  return {
    tasks: figure(StageStatus.TASKS),
    results: figure(StageStatus.RESULTS),
    // Its workers' own skips (counted atomically, as each is reported), and
    // the tasks lost workers held.
    skipped: Atomics.load(status.words, status.at(index, StageStatus.SKIPS)) +
      figure(StageStatus.DROPPED),
    inFlight,
    busyMs,
    idleMs,
    blockedMs: figure(StageStatus.BLOCKED_MS),
    awaitingMs: figure(StageStatus.AWAITING_MS),
    startMs: figure(StageStatus.START_MS),
    initMs: figure(StageStatus.INIT_MS),
    restarts: figure(StageStatus.RESTARTS),
    retries: figure(StageStatus.RETRIES),
    quarantined: figure(StageStatus.QUARANTINED),
    retried,
    slowest,
    durations: {
      boundsMs: StageStatus.DURATION_BOUNDS_MS,
      counts: StageStatus.DURATION_BOUNDS_MS.concat(Infinity).map((_, i) =>
        figure(StageStatus.DURATIONS + i)
      ),
      sumMs: figure(StageStatus.DURATIONS_MS),
    },
    spans: spans.map(({ startMs, endMs }) => ({
      startMs: startMs - createdAt,
      endMs: endMs === null ? null : endMs - createdAt,
    })),
  };
}
