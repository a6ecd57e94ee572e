/**
 * A worker's side of its stage's `taskTimeout`: it puts each timed task
 * under watch in the worker's slot of the status block, and takes it off
 * unless the watchdog (`main_thread/watchdog.ts`) took it over first. The two race on
 * one word (`StageStatus.TASK_STATE`) with a compare-exchange, so exactly one
 * of them wins: a worker whose task was taken over leaves its place to a
 * replacement and writes nothing more. Also the one wording of a timeout.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import { Dismissal } from "../shared_memory/dismissal.ts";
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

  /** A timed task starts now: the watchdog may take it over from now on. */
  watch(): void {
    this.#figures.taskStarted();
    // The start time first, then the state: the watchdog reads the time only
    // after it sees RUNNING.
    Atomics.store(this.#words, this.#state, this.#running);
  }

  /**
   * The timed task returned: takes it off watch and returns the ms it ran.
   * If the main thread already took it over (it ran too long), a replacement
   * owns this worker's place: this one resigns and unwinds without writing
   * anything more.
   */
  unwatch(): number {
    // The compare-exchange races the watchdog's: exactly one of them wins.
    if (
      Atomics.compareExchange(
        this.#words,
        this.#state,
        this.#running,
        this.#idle,
      ) !== this.#running
    ) {
      Dismissal.resign();
      Dismissal.unwind();
    }
    return this.#figures.taskElapsed();
  }
}
