/**
 * The watchdog of timed tasks: it looks at every timed worker's task state
 * regularly, and takes over a task that has run past its stage's
 * `taskTimeout`, so that its worker can be replaced.
 *
 * @module
 */

import { type AnyStage, internalsOf } from "../stage/internals.ts";
import { StageStatus } from "../shared_memory/status.ts";

/** What the watchdog watches: a worker's stage, place and generation. */
export interface Watched {
  readonly stage: AnyStage;
  readonly config: { readonly index: number; readonly generation: number };
  readonly gone: boolean;
}

/** Takes over timed tasks that run too long. */
export class Watchdog {
  readonly #timer: ReturnType<typeof setInterval>;

  /**
   * Looks every quarter of the shortest timeout (5 to 250 ms) at the workers
   * `watched()` lists; calls `overran` for each task it took over.
   */
  constructor(
    shortestTimeout: number,
    watched: () => readonly Watched[],
    overran: (worker: Watched, task: number, timeout: number) => void,
  ) {
    const period = Math.max(5, Math.min(250, shortestTimeout / 4));
    this.#timer = setInterval(() => {
      const now = performance.timeOrigin + performance.now();
      for (const worker of [...watched()]) {
        const timeout = internalsOf(worker.stage).taskTimeout;
        if (worker.gone || !Number.isFinite(timeout)) continue;
        const task = Watchdog.#takeOver(worker, now, timeout);
        if (task >= 0) overran(worker, task, timeout);
      }
    }, period);
    // The watchdog alone must not keep the process alive.
    Deno.unrefTimer(this.#timer as unknown as number);
  }

  /** Takes the worker's running task over if it ran past `timeout`; returns its number, or -1. */
  static #takeOver(worker: Watched, now: number, timeout: number): number {
    const status = internalsOf(worker.stage).status!;
    const { index, generation } = worker.config;
    const taskState = status.at(index, StageStatus.TASK_STATE);
    const running = StageStatus.taskState(generation, StageStatus.RUNNING);
    // The state is loaded before the start time it guards (the worker
    // stores them in the other order).
    if (
      Atomics.load(status.words, taskState) !== running ||
      now - status.figures[status.figure(index, StageStatus.STARTED)]! <=
        timeout
    ) return -1;
    // Take the task over; fails if the worker has just finished it.
    const taken = StageStatus.taskState(generation, StageStatus.TAKEN_OVER);
    if (
      Atomics.compareExchange(status.words, taskState, running, taken) !==
        running
    ) return -1;
    return status.words[status.at(index, StageStatus.SEQ)]!;
  }

  /** Stops watching. */
  stop(): void {
    clearInterval(this.#timer);
  }
}
