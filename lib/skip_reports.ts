/**
 * The `onError` callbacks of skipped tasks, run on the main thread: in task
 * order for an ordered stage, as they come for an unordered one, and all of
 * them before a reader sees the end of the results.
 *
 * A worker reports a skipped task with a message, which may arrive after the
 * task's later neighbours have finished, or after the stop has drained. So an
 * ordered stage's reports wait here until every earlier task of the stage is
 * known to be finished (from the workers' status slots), and a reader about
 * to see the end first waits for every report the status counts.
 *
 * @module
 */

import type { StageError } from "./errors.ts";
import type { CallbackGate } from "./result_output.ts";
import { type AnyStage, internalsOf, workersOf } from "./stage_internals.ts";
import { StageStatus } from "./status.ts";

/** A report waiting for its turn. */
interface Report {
  task: number;
  error: StageError;
}

/** The reports of one stage with an `onError` function. */
interface StageReports {
  stage: AnyStage;
  callback: (error: StageError) => void;
  /** Reports received from workers (lost workers' tasks are not counted here). */
  received: number;
  /** Tasks dropped with lost workers, reported at once. */
  lost: number;
  /** An ordered stage's reports not yet run, in task order. */
  waiting: Report[];
}

/** Runs the `onError` callbacks of skipped tasks, in order, before the end. */
export class SkipReports implements CallbackGate {
  readonly #stages = new Map<AnyStage, StageReports>();
  /** Settles the readers waiting for reports still on their way. */
  #arrival: { promise: Promise<void>; resolve: () => void } | null = null;
  /** Called with the error of a callback that threw. */
  readonly #callbackFailed: (
    stage: AnyStage,
    error: unknown,
    report: StageError,
  ) => void;

  constructor(
    stages: readonly AnyStage[],
    callbackFailed: (
      stage: AnyStage,
      error: unknown,
      report: StageError,
    ) => void,
  ) {
    this.#callbackFailed = callbackFailed;
    for (const stage of stages) {
      const callback = internalsOf(stage).onError;
      if (typeof callback !== "function") continue;
      this.#stages.set(stage, {
        stage,
        callback,
        received: 0,
        lost: 0,
        waiting: [],
      });
    }
  }

  /** A worker reported skipped task `task` of `stage`. */
  skipped(stage: AnyStage, task: number, error: StageError): void {
    const reports = this.#stages.get(stage);
    if (reports === undefined) return;
    reports.received++;
    if (internalsOf(stage).ordered) {
      // Insert in task order: reports of different workers interleave.
      const waiting = reports.waiting;
      let at = waiting.length;
      while (at > 0 && waiting[at - 1]!.task > task) at--;
      waiting.splice(at, 0, { task, error });
      this.#release(reports, this.#finishedBelow(stage));
    } else this.#run(reports, error);
    const arrival = this.#arrival;
    this.#arrival = null;
    arrival?.resolve();
  }

  /** `count` tasks of `stage` were dropped with a lost worker: report them now. */
  lost(stage: AnyStage, count: number, error: StageError): void {
    const reports = this.#stages.get(stage);
    if (reports === undefined) return;
    reports.lost += count;
    this.#run(reports, error);
  }

  /** Every worker of `stage` has exited: run what waits. */
  exited(stage: AnyStage): void {
    const reports = this.#stages.get(stage);
    if (reports !== undefined) this.#release(reports, Infinity);
  }

  pending(): Promise<void> | null {
    for (const reports of this.#stages.values()) {
      const status = internalsOf(reports.stage).status!;
      if (status.skipped - reports.lost > reports.received) {
        this.#arrival ??= Promise.withResolvers<void>();
        return this.#arrival.promise;
      }
    }
    // Every report is here; the tasks have all finished, so run the rest.
    for (const reports of this.#stages.values()) {
      this.#release(reports, Infinity);
    }
    return null;
  }

  /** Runs the waiting reports of tasks below `below`, in order. */
  #release(reports: StageReports, below: number): void {
    const waiting = reports.waiting;
    let count = 0;
    while (count < waiting.length && waiting[count]!.task < below) count++;
    for (const { error } of waiting.splice(0, count)) this.#run(reports, error);
  }

  #run(reports: StageReports, error: StageError): void {
    try {
      reports.callback(error);
    } catch (thrown) {
      this.#callbackFailed(reports.stage, thrown, error);
    }
  }

  /**
   * A task number below which every task of `stage` has finished: below the
   * first unfinished task any worker holds, and below every task claimed
   * (stamps grow, so a task claimed after this look is above every `TO`).
   * The slots are read plainly and may be a batch stale, which only lowers
   * the figure.
   */
  #finishedBelow(stage: AnyStage): number {
    const status = internalsOf(stage).status!;
    let below = 0;
    let held = Infinity;
    for (let i = 0; i < workersOf(stage); i++) {
      const from = status.words[status.at(i, StageStatus.FROM)]!;
      const to = status.words[status.at(i, StageStatus.TO)]!;
      if (to > below) below = to;
      if (from < to && from < held) held = from;
    }
    return Math.min(below, held);
  }
}
