/**
 * What the dashboard shows of a pipeline, as plain data the page draws and
 * the metrics write: its state, its failure in full, and per stage the
 * figures of `pipe.stats()`, the shares of its workers' time, the stage that
 * held the run back (as `insights()` tells it) and where the stage sits in
 * the picture of the graph. It reads what `stats()` reads and sends the
 * workers nothing.
 *
 * @module
 */

import { bottleneckOf } from "../features/insights.ts";
import { Pipeline, runOf } from "../pipeline.ts";
import type { RunView } from "../main_thread/run_state.ts";
import type {
  PipelineStats,
  StageStats,
  WorkerStats,
} from "../features/stats.ts";
import { describe } from "../checks.ts";

/** A pipeline of any task and result type, as the dashboard takes it. */
export type AnyPipeline = Pipeline<never, unknown>;

/**
 * The pipelines to watch: one, a list, or a function that returns the
 * current list (called at each request).
 *
 * @example A function that returns the current list
 * ```ts
 * import { type PipelineSource } from "@mpipe/mpipe/dashboard";
 * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
 *
 * const running: Pipeline<number, number>[] = [];
 * const source: PipelineSource = () => running;
 * running.push(new Pipeline(new OrderedStage((x: number) => x)));
 * for (const pipe of running) pipe.terminate();
 * ```
 */
export type PipelineSource =
  | Pipeline<never, unknown>
  | readonly Pipeline<never, unknown>[]
  | (() => Pipeline<never, unknown> | readonly Pipeline<never, unknown>[]);

/** A pipeline's state as a whole. */
export type PipelineState =
  | "running"
  | "stopping"
  | "done"
  | "terminated"
  | "failed";

/** The shares of a worker's (or a stage's workers') time since ready: working, blocked, waiting; NaN before ready. */
export interface Shares {
  working: number;
  blocked: number;
  waiting: number;
}

/** One stage as the page draws it. */
export interface StageView {
  /** Its name, made unique in the pipeline (`name (stage N)` when names repeat): the `stage` label. */
  label: string;
  stats: StageStats;
  shares: Shares;
  workerShares: Shares[];
  /** Its place in the picture: column (left to right) and row. */
  column: number;
  row: number;
}

/** One pipeline as the page draws it. */
export interface PipelineView {
  /** Its name, made unique among those watched: the `pipeline` label. */
  name: string;
  state: PipelineState;
  /** Its `StageError` in full (message, stack and cause), or null. */
  error: string | null;
  elapsedMs: number;
  put: number;
  read: number;
  /** The index of the stage that held the run back, or null. */
  bottleneck: number | null;
  /** `insights()`' sentence on the bottleneck. */
  bottleneckText: string;
  /**
   * The run's elapsed ms when the dashboard first saw `bottleneck` marked
   * (and saw it marked at every look since), or null; see `firstLook`.
   */
  bottleneckSinceMs: number | null;
  /** Whether it was marked at the dashboard's first look: it may have been marked before. */
  firstLook: boolean;
  stages: StageView[];
}

/** The pipelines of `source` now; throws a `TypeError` if it gives something else. */
export function pipelinesOf(source: PipelineSource): AnyPipeline[] {
  const value = typeof source === "function" ? source() : source;
  const list: readonly unknown[] = Array.isArray(value) ? value : [value];
  for (const [i, pipe] of list.entries()) {
    if (!(pipe instanceof Pipeline)) {
      throw new TypeError(
        `serveDashboard: 'pipelines' must be a Pipeline, an array of them or a function that returns them; item ${i} is ${
          describe(pipe)
        }`,
      );
    }
  }
  return list as AnyPipeline[];
}

/** Checks `pipelines` (the argument of `serveDashboard` or `metricsText`). */
export function checkSource(
  call: string,
  pipelines: unknown,
): PipelineSource {
  if (typeof pipelines === "function") {
    return pipelines as PipelineSource;
  }
  try {
    pipelinesOf(pipelines as PipelineSource);
  } catch {
    throw new TypeError(
      `${call}: 'pipelines' must be a Pipeline, an array of them or a function that returns them, got ${
        describe(pipelines)
      }`,
    );
  }
  return pipelines as PipelineSource;
}

/**
 * Since when each pipeline's marked stage has been marked, as far as the
 * dashboard's looks at it tell (each page message, each scrape): a stage
 * marked at one look and the next was marked between them.
 */
export class BottleneckHistory {
  readonly #seen = new WeakMap<
    object,
    { stage: number | null; sinceMs: number; firstLook: boolean }
  >();

  /** Notes that `pipe`'s marked stage is `stage` at `elapsedMs`; returns since when. */
  look(
    pipe: object,
    stage: number | null,
    elapsedMs: number,
  ): { sinceMs: number | null; firstLook: boolean } {
    let seen = this.#seen.get(pipe);
    if (seen === undefined || seen.stage !== stage) {
      seen = { stage, sinceMs: elapsedMs, firstLook: seen === undefined };
      this.#seen.set(pipe, seen);
    }
    return stage === null
      ? { sinceMs: null, firstLook: false }
      : { sinceMs: seen.sinceMs, firstLook: seen.firstLook };
  }
}

/** What the dashboard shows of `pipelines` now (noting their bottlenecks in `history`, if given). */
export function viewsOf(
  pipelines: readonly AnyPipeline[],
  history: BottleneckHistory = new BottleneckHistory(),
): PipelineView[] {
  const names = unique(
    pipelines.map((pipe) => pipe.name),
    (name, n) => `${name} (${n})`,
  );
  return pipelines.map((pipe, i) => viewOf(pipe, names[i]!, history));
}

function viewOf(
  pipe: AnyPipeline,
  name: string,
  history: BottleneckHistory,
): PipelineView {
  const stats = pipe.stats();
  const run = runOf(pipe)!;
  const labels = unique(
    stats.stages.map((stage) => stage.name),
    (label, _, index) => `${label} (stage ${index + 1})`,
  );
  const places = layout(stats);
  const bottleneck = bottleneckOf(stats);
  const since = history.look(pipe, bottleneck.stage, stats.elapsedMs);
  return {
    name,
    state: stateOf(run, stats),
    error: run.failure === null ? null : inFull(run.failure),
    elapsedMs: stats.elapsedMs,
    put: stats.put,
    read: stats.read,
    bottleneck: bottleneck.stage,
    bottleneckText: bottleneck.text,
    bottleneckSinceMs: since.sinceMs,
    firstLook: since.firstLook,
    stages: stats.stages.map((stage, i) => ({
      label: labels[i]!,
      stats: stage,
      shares: sharesOf(stage.workers),
      workerShares: stage.workers.map((worker) => sharesOf([worker])),
      column: places[i]!.column,
      row: places[i]!.row,
    })),
  };
}

function stateOf(run: RunView, stats: PipelineStats): PipelineState {
  if (run.failure !== null) return "failed";
  if (run.terminated) return "terminated";
  if (stats.done) return "done";
  return run.stopRequested ? "stopping" : "running";
}

/** An error with its stack and its causes, as a person debugging wants it. */
function inFull(error: unknown): string {
  const lines: string[] = [];
  for (let e = error, depth = 0; e !== undefined && depth < 5; depth++) {
    const text = e instanceof Error
      ? (e.stack?.includes(e.message) ? e.stack : `${e.name}: ${e.message}`)
      : String(e);
    lines.push(depth === 0 ? text : `Caused by: ${text}`);
    e = e instanceof Error ? e.cause : undefined;
  }
  return lines.join("\n");
}

/** The shares of the time since ready that `workers` spent working, blocked and waiting. */
export function sharesOf(workers: readonly WorkerStats[]): Shares {
  let working = 0, blocked = 0, waiting = 0;
  for (const worker of workers) {
    const b = Math.min(worker.blockedMs, worker.busyMs);
    working += worker.busyMs - b;
    blocked += b;
    waiting += worker.idleMs;
  }
  const ready = working + blocked + waiting;
  return ready > 0
    ? {
      working: working / ready,
      blocked: blocked / ready,
      waiting: waiting / ready,
    }
    : { working: NaN, blocked: NaN, waiting: NaN };
}

/**
 * `names`, each repeated one renamed by `rename` (given its count so far
 * and its index); a new name that another name already is gets `#k` too,
 * so that no two come out the same (Prometheus refuses repeated series).
 */
export function unique(
  names: readonly string[],
  rename: (name: string, n: number, index: number) => string,
): string[] {
  const counts = new Map<string, number>();
  for (const name of names) counts.set(name, (counts.get(name) ?? 0) + 1);
  const taken = new Set(names.filter((name) => counts.get(name) === 1));
  const seen = new Map<string, number>();
  return names.map((name, index) => {
    if (counts.get(name) === 1) return name;
    const n = (seen.get(name) ?? 0) + 1;
    seen.set(name, n);
    const base = rename(name, n, index);
    let label = base;
    for (let k = 2; taken.has(label); k++) label = `${base} #${k}`;
    taken.add(label);
    return label;
  });
}

/**
 * Each stage's place in the picture: a stage one column right of the
 * stages linked to it, a filter's sub-pipelines in the rows below it,
 * starting in its column. The stages come in flow order, so a stage's
 * upstream stages and its filter are placed before it.
 */
export function layout(
  stats: PipelineStats,
): { column: number; row: number }[] {
  const previous = stats.stages.map(() => [] as number[]);
  stats.stages.forEach((stage, i) => {
    for (const next of stage.next) previous[next]!.push(i);
  });
  const places: { column: number; row: number }[] = [];
  const taken = new Set<string>();
  stats.stages.forEach((stage, i) => {
    const before = previous[i]!.map((p) => places[p]!);
    const filter = stage.within === null ? null : places[stage.within]!;
    const column = before.length > 0
      ? Math.max(...before.map((p) => p.column)) + 1
      : filter?.column ?? 0;
    let row = filter !== null && before.length === 0
      ? filter.row + 1
      : before[0]?.row ?? 0;
    while (taken.has(`${column},${row}`)) row++;
    taken.add(`${column},${row}`);
    places.push({ column, row });
  });
  return places;
}
