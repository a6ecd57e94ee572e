/**
 * A worker's side of its stage's `taskTimeout`: it marks each timed task
 * running in the worker's slot of the status block, and ends it unless the
 * watchdog (`main_thread/watchdog.ts`) took it over first. The two race on
 * one word (`StageStatus.TASK_STATE`) with a compare-exchange, so exactly one
 * of them wins: a worker whose task was taken over leaves its place to a
 * replacement and writes nothing more. Also the one wording of a timeout.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import { Bell } from "../shared_memory/bell.ts";
import { StageStatus } from "../shared_memory/status.ts";
import type { WorkerFigures } from "./figures.ts";

/** A worker's timed tasks, one at a time (the stage has a taskTimeout). */
export class TaskTimeout {
  /** The error of task `seq`, which ran longer than `timeout` ms (`elapsed` ms, if known). */
  static error(seq: number, timeout: number, elapsed?: number): DOMException {
    const ran = elapsed === undefined ? "" : ` (${Math.round(elapsed)} ms)`;
    return new DOMException(
      `task ${seq} ran longer than its taskTimeout of ${timeout} ms${ran}`,
      "TimeoutError",
    );
  }

  /** The stage's taskTimeout (ms). */
  readonly ms: number;
  readonly #words: Int32Array;
  /** Index of this worker's TASK_STATE word. */
  readonly #state: number;
  /** The word's values while a task runs and between tasks, tagged with this worker's generation. */
  readonly #running: number;
  readonly #idle: number;
  readonly #figures: WorkerFigures;

  constructor(
    status: StageStatus,
    index: number,
    generation: number,
    ms: number,
    figures: WorkerFigures,
  ) {
    this.ms = ms;
    this.#words = status.words;
    this.#state = status.at(index, StageStatus.TASK_STATE);
    // Both values carry this worker's generation, so they cannot match a
    // replacement's running task.
    this.#running = StageStatus.taskState(generation, StageStatus.RUNNING);
    this.#idle = StageStatus.taskState(generation, StageStatus.IDLE);
    this.#figures = figures;
  }

  /** A timed task starts now. */
  start(): void {
    this.#figures.taskStarted();
    // The start time first, then the state: the watchdog reads the time only
    // after it sees RUNNING.
    Atomics.store(this.#words, this.#state, this.#running);
  }

  /**
   * Ends the timed task; returns the ms it ran. If the main thread already
   * took it over (it ran too long), a replacement owns this worker's place:
   * this one gives it up and unwinds without writing anything more.
   */
  end(): number {
    // The compare-exchange races the watchdog's: exactly one of them wins.
    if (
      Atomics.compareExchange(
        this.#words,
        this.#state,
        this.#running,
        this.#idle,
      ) !== this.#running
    ) {
      Bell.revoke();
      Bell.checkRevoked();
    }
    return this.#figures.taskElapsed();
  }
}
