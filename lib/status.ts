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
 * then one float per worker for the start time of its running task.
 */
export class StageStatus {
  /** Header word: tasks dropped by the `onError` policy, timeouts and lost workers. */
  static readonly SKIPPED = 0;
  /** Words before the first worker's slot. */
  static readonly HEADER = 4;
  /** Words of a worker's slot. */
  static readonly SLOT = 5;
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

  /** Task state: no timed task runs. */
  static readonly IDLE = 0;
  /** Task state: a timed task runs (its start time is in `started`). */
  static readonly RUNNING = 1;
  /** Task state: the main thread took the task over (it ran too long); the worker is being replaced. */
  static readonly TAKEN_OVER = 2;
  /** The task-state word of a worker of `generation` in `state`. */
  static taskState(generation: number, state: number): number {
    return (generation << 2) | state;
  }

  /** Creates the shared memory of a stage of `size` workers. */
  static allocate(size: number): SharedArrayBuffer {
    return new SharedArrayBuffer(StageStatus.#timesOffset(size) + size * 8);
  }

  static #timesOffset(size: number): number {
    return ((StageStatus.HEADER + size * StageStatus.SLOT) * 4 + 7) & ~7;
  }

  readonly buffer: SharedArrayBuffer;
  readonly words: Int32Array;
  /** Start time (ms since the epoch) of each worker's running timed task. */
  readonly started: Float64Array;

  constructor(buffer: SharedArrayBuffer, size: number) {
    const offset = StageStatus.#timesOffset(size);
    this.buffer = buffer;
    this.words = new Int32Array(buffer, 0, offset >> 2);
    this.started = new Float64Array(buffer, offset, size);
  }

  /** Index of word `word` in worker `index`'s slot. */
  at(index: number, word: number): number {
    return StageStatus.HEADER + index * StageStatus.SLOT + word;
  }

  /** Tasks the stage has dropped so far. */
  get skipped(): number {
    // Workers add to it at any time: a snapshot, exact once they have exited.
    return Atomics.load(this.words, StageStatus.SKIPPED);
  }
}
