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

import type { StageError } from "../errors.ts";
import type { CallbackGate } from "./result_output.ts";
import { type AnyStage, internalsOf, workersOf } from "../stage/internals.ts";
import { StageStatus } from "../shared_memory/status.ts";

/** A report waiting for its turn. */
interface Report {
  task: number;
  error: StageError;
}

/** The reports of one stage with an `onError` function. */
interface StageReports {
  stage: AnyStage;
  callback: (error: StageError) => void;
  /** Reports received from each worker slot (lost workers' held tasks are not counted here). */
  received: number[];
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
        received: new Array(workersOf(stage)).fill(0),
        lost: 0,
        waiting: [],
      });
    }
  }

  /** Worker `worker` of `stage` reported skipped task `task`. */
  skipped(
    stage: AnyStage,
    worker: number,
    task: number,
    error: StageError,
  ): void {
    const reports = this.#stages.get(stage);
    if (reports === undefined) return;
    reports.received[worker]!++;
    this.#add(reports, task, error);
    const arrival = this.#arrival;
    this.#arrival = null;
    arrival?.resolve();
  }

  /** Runs the report of task `task`, or, in an ordered stage, queues it until its turn. */
  #add(reports: StageReports, task: number, error: StageError): void {
    if (!internalsOf(reports.stage).ordered) return this.#run(reports, error);
    // Insert in task order: reports of different workers interleave.
    const waiting = reports.waiting;
    let at = waiting.length;
    while (at > 0 && waiting[at - 1]!.task > task) at--;
    waiting.splice(at, 0, { task, error });
    this.#release(reports, this.#releasableBelow(reports));
  }

  /**
   * Tasks of `stage` were dropped with a lost worker, one `errors` entry
   * each, in task order (its place no longer holds them).
   */
  lost(stage: AnyStage, errors: StageError[]): void {
    const reports = this.#stages.get(stage);
    if (reports === undefined) return;
    reports.lost += errors.length;
    for (const error of errors) this.#add(reports, error.task!, error);
  }

  /**
   * `count` reports of worker slot `worker` of `stage` will never arrive (a
   * replaced worker's, written off): no callback runs for them.
   */
  abandoned(stage: AnyStage, worker: number, count: number): void {
    const reports = this.#stages.get(stage);
    if (reports === undefined || count <= 0) return;
    reports.received[worker]! += count;
  }

  /** Every worker of `stage` has exited by itself, after the stop: run what waits. */
  exited(stage: AnyStage): void {
    const reports = this.#stages.get(stage);
    if (reports !== undefined) this.#release(reports, Infinity);
  }

  pending(): Promise<void> | null {
    for (const reports of this.#stages.values()) {
      const status = internalsOf(reports.stage).status!;
      const received = reports.received.reduce((sum, n) => sum + n, 0);
      if (status.skipped - reports.lost > received) {
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
   * A task number below which every task of the stage has finished and every
   * skip has been received, so its reports may run in order: below the first
   * unfinished task any worker holds, and below every task claimed (stamps
   * grow, so a task claimed after this look is above every `TO`); none at
   * all while a worker's report is on its way (its slot counted more skips
   * than were received). Each slot's FROM is stored after the skip counts of
   * the tasks below it, and loaded here before them.
   */
  #releasableBelow(reports: StageReports): number {
    const { stage } = reports;
    const status = internalsOf(stage).status!;
    const words = status.words;
    let below = 0;
    let held = Infinity;
    for (let i = 0; i < workersOf(stage); i++) {
      const from = Atomics.load(words, status.at(i, StageStatus.FROM));
      const to = Atomics.load(words, status.at(i, StageStatus.TO));
      if (to > below) below = to;
      if (from < to && from < held) held = from;
    }
    for (let i = 0; i < workersOf(stage); i++) {
      const sent = Atomics.load(words, status.at(i, StageStatus.SKIPS));
      if (sent > reports.received[i]!) return 0;
    }
    return Math.min(below, held);
  }
}
