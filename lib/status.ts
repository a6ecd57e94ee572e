/**
 * A stage's shared status block: what the main thread needs to know of its
 * workers without asking them (they are busy, or dead).
 *
 * Who writes what: each worker writes its own slot (except `KILL`) and the
 * header's counters; the main thread writes `KILL`, and takes a timed task
 * over by swapping `TASK_STATE`. Everyone else only reads.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

/**
 * Layout: a header of stage-wide counters, then one slot of words per worker,
 * then one slot of figures (64-bit floats) per worker.
 */
export class StageStatus {
  /** Header word: tasks dropped by the `onError` policy, timeouts and lost workers. */
  static readonly SKIPPED = 0;
  /** Words before the first worker's slot. */
  static readonly HEADER = 4;
  /** Words of a worker's slot. */
  static readonly SLOT = 6;
  /**
   * Slot word: what the worker's timed task is doing: one of the task states
   * below, tagged with the worker's generation (`taskState()`), so that a
   * killed worker's late compare-exchange can never match its replacement's.
   */
  static readonly TASK_STATE = 0;
  /** Slot word: the first claimed task whose results are not all published. */
  static readonly FROM = 1;
  /** Slot word: one past the last claimed task. */
  static readonly TO = 2;
  /** Slot word: the task running now. */
  static readonly SEQ = 3;
  /** Slot word: workers of a generation below this one were killed (see `Bell.kill`). */
  static readonly KILL = 4;
  /** Slot word: tasks this place's workers skipped (added to before each is reported). */
  static readonly SKIPS = 5;

  /** Task state: no timed task runs. */
  static readonly IDLE = 0;
  /** Task state: a timed task runs (its start time is figure `STARTED`). */
  static readonly RUNNING = 1;
  /** Task state: the main thread took the task over (it ran too long); the worker is being replaced. */
  static readonly TAKEN_OVER = 2;
  /** The task-state word of a worker of `generation` in `state`. */
  static taskState(generation: number, state: number): number {
    return (generation << 2) | state;
  }

  /**
   * Figures of a worker's slot, written by the worker alone with plain
   * stores (a reader may see them a batch late). Counters are floats so
   * they never wrap.
   */
  static readonly FIGURES = 20;
  /** Figure: when the running timed task started (ms since the epoch). */
  static readonly STARTED = 0;
  /** Figure: tasks this slot's workers finished, with a result or without. */
  static readonly TASKS = 1;
  /** Figure: results this slot's workers put downstream. */
  static readonly RESULTS = 2;
  /** Figure: ms this slot's workers spent running tasks. */
  static readonly BUSY_MS = 3;
  /** Figure: ms this slot's workers spent waiting for tasks. */
  static readonly IDLE_MS = 4;
  /** Figure: ms from the worker's spawn to its target being loaded (the latest worker). */
  static readonly START_MS = 5;
  /** Figure: ms its `doInit()` took (the latest worker). */
  static readonly INIT_MS = 6;
  /** Figure: how many times this slot's worker was replaced (the main thread writes it, as it replaces the worker). */
  static readonly RESTARTS = 7;
  /** Figure: tasks the worker has claimed and not finished. */
  static readonly IN_FLIGHT = 8;
  /** Figure: ms the worker was blocked writing results (a full ring or backlog downstream), within its busy time. */
  static readonly BLOCKED_MS = 9;
  /** Figures: the worker's five slowest tasks so far, as (seq, ms) pairs, slowest first; ms is a batch's time per task. */
  static readonly SLOWEST = 10;

  /** Creates the shared memory of a stage of `size` workers. */
  static allocate(size: number): SharedArrayBuffer {
    return new SharedArrayBuffer(
      StageStatus.#timesOffset(size) + size * StageStatus.FIGURES * 8,
    );
  }

  static #timesOffset(size: number): number {
    return ((StageStatus.HEADER + size * StageStatus.SLOT) * 4 + 7) & ~7;
  }

  readonly buffer: SharedArrayBuffer;
  readonly words: Int32Array;
  /** Each worker's figures, `FIGURES` floats a worker. */
  readonly figures: Float64Array;

  constructor(buffer: SharedArrayBuffer, size: number) {
    const offset = StageStatus.#timesOffset(size);
    this.buffer = buffer;
    this.words = new Int32Array(buffer, 0, offset >> 2);
    this.figures = new Float64Array(
      buffer,
      offset,
      size * StageStatus.FIGURES,
    );
  }

  /** Index of word `word` in worker `index`'s slot. */
  at(index: number, word: number): number {
    return StageStatus.HEADER + index * StageStatus.SLOT + word;
  }

  /** Index of figure `figure` of worker `index`. */
  figure(index: number, figure: number): number {
    return index * StageStatus.FIGURES + figure;
  }

  /** Tasks the stage has dropped so far. */
  get skipped(): number {
    // Workers add to it at any time: a snapshot, exact once they have exited.
    return Atomics.load(this.words, StageStatus.SKIPPED);
  }
}
