/**
 * What a worker counts of its own work, kept in its slot of the stage's
 * status block: tasks, results, busy, idle and blocked time, start-up and
 * `doInit` time, its slowest tasks. The worker adds to private counters and
 * writes them with plain stores once per publish, so the main thread reads
 * them without a message, at most a publish late. It also stamps when
 * it began working or waiting (`StageStatus.SINCE`), so that a reader can
 * add the time since to what has ended.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import { StageStatus } from "../shared_memory/status.ts";

/** One worker's counters and its figures in the status block. */
export class WorkerFigures {
  /** How many slow tasks each worker notes. */
  static readonly SLOWEST = StageStatus.SLOWEST_PAIRS;

  readonly #figures: Float64Array;
  /** Where this worker's figures start in `#figures`. */
  readonly #at: number;
  /** Tasks finished, with a result or without, and not skipped (see `StageStatus.SKIPS`). */
  tasks: number;
  /** Results put downstream. */
  results: number;
  #busyMs: number;
  #idleMs: number;
  /** Of `#busyMs`, the time spent awaiting tasks' Promises (see `StageStatus.AWAITING_MS`). */
  #awaitingMs: number;
  /** Ms the place's earlier workers were blocked writing results. */
  readonly #blockedBase: number;
  /** When the last busy stretch ended (performance.now()), for the idle time. */
  #lastEnd = 0;
  /** The slowest tasks so far: seq and ms, slowest first. */
  #slowest: { seq: number; ms: number }[];
  /** This thread's `performance.timeOrigin`, for the `SINCE` figure. */
  readonly #origin = performance.timeOrigin;
  /** The worker is about to exit: it neither works nor waits any more. */
  #exiting = false;

  /** The figures of worker `index`; a replacement goes on where its place's last worker stopped. */
  constructor(status: StageStatus, index: number) {
    this.#figures = status.figures;
    this.#at = status.figure(index, 0);
    const figures = this.#figures;
    this.tasks = figures[this.#at + StageStatus.TASKS]!;
    this.results = figures[this.#at + StageStatus.RESULTS]!;
    this.#busyMs = figures[this.#at + StageStatus.BUSY_MS]!;
    this.#idleMs = figures[this.#at + StageStatus.IDLE_MS]!;
    this.#awaitingMs = figures[this.#at + StageStatus.AWAITING_MS]!;
    this.#blockedBase = figures[this.#at + StageStatus.BLOCKED_MS]!;
    this.#slowest = [];
    for (let i = 0; i < WorkerFigures.SLOWEST; i++) {
      const seq = figures[this.#at + StageStatus.SLOWEST + 2 * i]!;
      const ms = figures[this.#at + StageStatus.SLOWEST + 2 * i + 1]!;
      if (seq >= 0) this.#slowest.push({ seq, ms });
    }
  }

  /** The target loaded (`now`, performance.now()), after a spawn at `spawnedAt` (ms since the epoch). */
  loaded(now: number, spawnedAt: number): void {
    this.#figures[this.#at + StageStatus.START_MS] = performance.timeOrigin +
      now - spawnedAt;
  }

  /** `doInit()` ran from `loaded` to `now`: the worker is ready, idle from now. */
  ready(loaded: number, now: number): void {
    this.#figures[this.#at + StageStatus.INIT_MS] = now - loaded;
    this.#lastEnd = now;
    this.#since(now);
  }

  /** A timed task started now. */
  taskStarted(): void {
    this.#figures[this.#at + StageStatus.STARTED] = performance.timeOrigin +
      performance.now();
  }

  /** Ms since the running timed task started. */
  taskElapsed(): number {
    return performance.timeOrigin + performance.now() -
      this.#figures[this.#at + StageStatus.STARTED]!;
  }

  /** The worker claimed `count` tasks. */
  claimed(count: number): void {
    this.#figures[this.#at + StageStatus.IN_FLIGHT] = count;
  }

  /**
   * A claim's tasks begin now: the wait since the last ones ends. Published
   * at once (their busy time is published as they end), so that a reader counts
   * the time from now as busy, not as idle.
   */
  began(now: number): void {
    this.#idleMs += now - this.#lastEnd;
    this.#figures[this.#at + StageStatus.IDLE_MS] = this.#idleMs;
    this.#since(now);
  }

  /**
   * A claim's `count` tasks ran from `started` (see `began`) to `ended`,
   * `perTask` ms a task, the first one `seq`.
   */
  ran(
    started: number,
    ended: number,
    perTask: number,
    seq: number,
    count: number,
  ): void {
    this.#busyMs += ended - started;
    this.#lastEnd = ended;
    // The histogram: two stores a claim, in place (a replacement goes on).
    const bounds = StageStatus.DURATION_BOUNDS_MS;
    let bucket = 0;
    while (bucket < bounds.length && perTask > bounds[bucket]!) bucket++;
    this.#figures[this.#at + StageStatus.DURATIONS + bucket]! += count;
    this.#figures[this.#at + StageStatus.DURATIONS_MS]! += ended - started;
    const slowest = this.#slowest;
    if (
      slowest.length === WorkerFigures.SLOWEST &&
      slowest.at(-1)!.ms >= perTask
    ) {
      return;
    }
    // Rare: a claim slower than the slowest noted so far.
    slowest.push({ seq, ms: perTask });
    slowest.sort((a, b) => b.ms - a.ms);
    if (slowest.length > WorkerFigures.SLOWEST) slowest.pop();
    const at = this.#at + StageStatus.SLOWEST;
    for (let i = 0; i < slowest.length; i++) {
      this.#figures[at + 2 * i] = slowest[i]!.seq;
      this.#figures[at + 2 * i + 1] = slowest[i]!.ms;
    }
  }

  /** A task was quarantined here (a remote stage's, by its stand-in; rare: written at once). */
  quarantined(): void {
    this.#figures[this.#at + StageStatus.QUARANTINED]!++;
  }

  /** A retry starts (rare: written at once). */
  retry(): void {
    this.#figures[this.#at + StageStatus.RETRIES]!++;
  }

  /**
   * Task `seq` ended after `attempts` attempts: noted among the slot's
   * retried tasks if it is among the five with the most (rare: written at once).
   */
  retried(seq: number, attempts: number): void {
    const figures = this.#figures;
    const at = this.#at + StageStatus.RETRIED;
    const pairs = StageStatus.SLOWEST_PAIRS;
    let i = pairs;
    while (
      i > 0 &&
      !(figures[at + 2 * (i - 1)]! >= 0 &&
        figures[at + 2 * (i - 1) + 1]! >= attempts)
    ) {
      i--;
    }
    if (i === pairs) return;
    for (let j = pairs - 1; j > i; j--) {
      figures[at + 2 * j] = figures[at + 2 * (j - 1)]!;
      figures[at + 2 * j + 1] = figures[at + 2 * (j - 1) + 1]!;
    }
    figures[at + 2 * i] = seq;
    figures[at + 2 * i + 1] = attempts;
  }

  /** The worker awaited its tasks' Promises for `ms`, within its busy time. */
  awaited(ms: number): void {
    this.#awaitingMs += ms;
  }

  /** A busy stretch starts now (a worker running tasks at once: the first is in flight). */
  busyFrom(now: number): void {
    this.began(now);
    this.#lastEnd = now;
  }

  /** The busy stretch ends now (nothing is in flight). */
  idleFrom(now: number): void {
    this.#busyMs += now - this.#lastEnd;
    this.#lastEnd = now;
  }

  /** The worker's last task is done (`now`): it waited since, for the stop, and is about to exit. */
  exiting(now: number): void {
    this.#idleMs += now - this.#lastEnd;
    this.#lastEnd = now;
    this.#exiting = true;
  }

  /** Writes the counters, with the tasks claimed and not finished: plain stores, once per publish. */
  write(inFlight: number, blockedMs: number): void {
    const figures = this.#figures;
    const at = this.#at;
    figures[at + StageStatus.TASKS] = this.tasks;
    figures[at + StageStatus.RESULTS] = this.results;
    figures[at + StageStatus.BUSY_MS] = this.#busyMs;
    figures[at + StageStatus.IDLE_MS] = this.#idleMs;
    figures[at + StageStatus.AWAITING_MS] = this.#awaitingMs;
    figures[at + StageStatus.IN_FLIGHT] = inFlight;
    figures[at + StageStatus.BLOCKED_MS] = this.#blockedBase + blockedMs;
    // Stored after the times it completes: from the end of the last busy
    // stretch on, the worker waits.
    if (inFlight === 0) {
      figures[at + StageStatus.SINCE] = this.#exiting
        ? 0
        : this.#origin + this.#lastEnd;
    }
  }

  /** Stamps when the worker began working or waiting (see `StageStatus.SINCE`). */
  #since(now: number): void {
    this.#figures[this.#at + StageStatus.SINCE] = this.#origin + now;
  }
}
