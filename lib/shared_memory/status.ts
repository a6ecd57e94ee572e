/**
 * A stage's shared status block: what the main thread needs to know of its
 * workers without asking them (they are busy, or dead).
 *
 * Who writes what: each worker writes its own slot (except `KILL`) and held
 * table, and the header's counters; the main thread writes `KILL`, takes a
 * timed task over by swapping `TASK_STATE`, and empties a lost worker's held
 * tasks (`dropHeld`). Everyone else only reads.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

/** A float in shared memory: an index into a `Float64Array` over `buffer`. */
export interface FigureRef {
  buffer: SharedArrayBuffer;
  index: number;
}

/**
 * Layout: a header of stage-wide counters, then one slot of words per worker,
 * then one held table per worker (see `HELD`), then one slot of figures
 * (64-bit floats) per worker, then the stage's own figures (`RECEIVED`, then
 * `FULL_MS` of each producer ring of its input).
 */
export class StageStatus {
  /** Header word: tasks dropped by the `onError` policy, timeouts and lost workers. */
  static readonly SKIPPED = 0;
  /**
   * Header word: the words of each worker's held table, written once by
   * `allocate`: 0 for workers that run one task at a time, whose held tasks
   * are the range [`FROM`, `TO`) (a claim's stamps are consecutive); the
   * most tasks a worker runs at once otherwise (`concurrency`, or a remote
   * stage's size), whose tasks interleave with the other workers'. A table
   * word is a task held (its seq + 1), or 0 (free): the worker holds a task
   * there from before it starts until its results are published (see
   * `HeldTable`). A remote stage's stand-in running batches keeps only the
   * range: it runs alone.
   */
  static readonly HELD = 1;
  /**
   * Header word of an elastic stage: its workers running (their places
   * `OPEN`). A worker leaves only by taking itself off it, never below the
   * stage's `min`; the main thread adds to it as it starts a worker.
   */
  static readonly WORKERS = 2;
  /** Header word of an elastic stage: workers the main thread asks to leave (rebalancing); an idle one takes a request and leaves. */
  static readonly SHED = 3;
  /** Words before the first worker's slot. */
  static readonly HEADER = 4;
  /** Words of a worker's slot. */
  static readonly SLOT = 7;
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
  /** Slot word: workers of a generation below this one were killed (see `Dismissal.killWord`). */
  static readonly KILL = 4;
  /** Slot word: tasks this place's workers skipped (added to before each is reported). */
  static readonly SKIPS = 5;
  /**
   * Slot word: the place's state, `OPEN`, `PARKED` or `STOPPED` (elastic
   * stages; a fixed stage's places stay `OPEN`). Its changes are
   * compare-exchanges, so that the main thread starting a worker in a parked
   * place and a stopping worker ending it never both win.
   */
  static readonly PLACE = 6;

  /** Place state: a worker holds the place (or is starting in it). */
  static readonly OPEN = 0;
  /** Place state: no worker holds it; its output rings are open, and a worker may start in it. */
  static readonly PARKED = 1;
  /** Place state: no worker holds it, and its output rings carry their stop record: it is done. */
  static readonly STOPPED = 2;

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
   * stores (a reader may see them a publish late). Counters are floats so
   * they never wrap.
   */
  static readonly FIGURES = 56;
  /** Figure: when the running timed task started (ms since the epoch). */
  static readonly STARTED = 0;
  /** Figure: tasks this slot's workers finished, with a result or without, and did not skip (see `SKIPS`). */
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
  /**
   * Figures: the worker's five slowest tasks so far, as (seq, ms) pairs,
   * slowest first; ms is a claim's time per task; seq -1 marks an empty pair.
   */
  static readonly SLOWEST = 10;
  /** How many (seq, ms) pairs `SLOWEST` holds. */
  static readonly SLOWEST_PAIRS = 5;
  /**
   * Figure: tasks this slot's lost workers held, dropped as new workers took
   * their place (the main thread adds them as it replaces the worker). The
   * tasks the workers themselves skip are counted in the slot word `SKIPS`;
   * `SKIPPED` counts both, for the whole stage.
   */
  static readonly DROPPED = 20;
  /**
   * Figure: when the worker last began working or waiting (ms since the
   * epoch): working while `IN_FLIGHT` is above 0, waiting otherwise; 0 while
   * it does neither (not ready yet, or gone). A reader adds the time since to
   * `BUSY_MS` or `IDLE_MS`, which count only what has ended.
   */
  static readonly SINCE = 21;
  /**
   * Figure: ms of `BUSY_MS` the worker spent awaiting its tasks' Promises,
   * its thread free for other work: timers, I/O (and the code after each
   * await, which a worker cannot time apart). A worker of one task at a
   * time samples the first async task of each claim and counts its wait
   * for each of the claim's tasks (a claim of slow tasks is one task).
   */
  static readonly AWAITING_MS = 22;
  /**
   * Upper bounds (ms) of the buckets of the task-duration histogram: 10 µs
   * to 10 s, 1, 2.5 and 5 a decade. A task counts in the first bucket whose
   * bound is at least its time (its claim's time per task), or in the last
   * one, above every bound.
   */
  static readonly DURATION_BOUNDS_MS: readonly number[] = [
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
  ];
  /** Figures: tasks in each bucket of the histogram, then above the last bound (20 figures). */
  static readonly DURATIONS = 23;
  /** Figure: the ms of every task counted in the histogram, summed. */
  static readonly DURATIONS_MS = 43;
  /** Figure: retries this slot's workers started (see the stage option `retry`), of tasks that failed here or were lost with a worker before. */
  static readonly RETRIES = 44;
  /**
   * Figure: tasks quarantined as this slot's workers were lost: each had cost
   * the stage its `crashBudget` of workers (the main thread adds them, as
   * for `DROPPED`, in which they are counted too); a remote stage's stand-in
   * adds those its hosts' workers or the hosts themselves were lost to.
   */
  static readonly QUARANTINED = 45;
  /**
   * Figures: up to five tasks this slot's workers finished or failed after
   * more than one attempt, as (seq, attempts) pairs, the most attempts first;
   * seq -1 marks an empty pair.
   */
  static readonly RETRIED = 46;

  /**
   * Stage figure: tasks a `FilterStage` passed into this stage, the root of
   * one of its sub-pipelines (the filter's worker writes it; other stages
   * count what reached them from the results of the stages before them).
   */
  static readonly RECEIVED = 0;
  /**
   * Stage figures, one per producer ring of the stage's input: ms that
   * producer waited for room there (a full ring, or a full `maxBacklog`),
   * written by the producer alone.
   */
  static readonly FULL_MS = 1;

  /**
   * Creates the shared memory of a stage of `size` workers whose input has
   * `producers` rings, with held tables of `held` words (see `HELD`).
   */
  static allocate(
    size: number,
    producers: number,
    held: number,
  ): SharedArrayBuffer {
    const buffer = new SharedArrayBuffer(
      StageStatus.#timesOffset(size, held) +
        (size * StageStatus.FIGURES + StageStatus.FULL_MS + producers) * 8,
    );
    new Int32Array(buffer)[StageStatus.HELD] = held;
    const status = new StageStatus(buffer, size);
    for (let i = 0; i < size; i++) {
      for (let pair = 0; pair < StageStatus.SLOWEST_PAIRS; pair++) {
        status.figures[status.figure(i, StageStatus.SLOWEST + 2 * pair)] = -1;
        status.figures[status.figure(i, StageStatus.RETRIED + 2 * pair)] = -1;
      }
    }
    return buffer;
  }

  static #timesOffset(size: number, held: number): number {
    return ((StageStatus.HEADER + size * (StageStatus.SLOT + held)) * 4 + 7) &
      ~7;
  }

  readonly buffer: SharedArrayBuffer;
  readonly words: Int32Array;
  /** Each worker's figures, `FIGURES` floats a worker. */
  readonly figures: Float64Array;
  /** The stage's own figures: `RECEIVED`, then `FULL_MS` of each producer ring. */
  readonly stageFigures: Float64Array;

  /** Words of each worker's held table (see `HELD`). */
  readonly held: number;
  readonly #size: number;

  constructor(buffer: SharedArrayBuffer, size: number) {
    this.held = new Int32Array(buffer)[StageStatus.HELD]!;
    this.#size = size;
    const offset = StageStatus.#timesOffset(size, this.held);
    this.buffer = buffer;
    this.words = new Int32Array(buffer, 0, offset >> 2);
    this.figures = new Float64Array(
      buffer,
      offset,
      size * StageStatus.FIGURES,
    );
    this.stageFigures = new Float64Array(
      buffer,
      offset + size * StageStatus.FIGURES * 8,
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

  /** Index of the first word of worker `index`'s held table. */
  heldAt(index: number): number {
    return StageStatus.HEADER + this.#size * StageStatus.SLOT +
      index * this.held;
  }

  /**
   * The index of stage figure `figure` in a `Float64Array` over the whole
   * block (for a thread that writes only it).
   */
  stageFigureIndex(figure: number): number {
    return (this.figures.byteOffset >> 3) + this.figures.length + figure;
  }

  /**
   * The tasks worker `index` holds (claimed, their results not all
   * published), in order: exact once it writes no more (it was lost).
   */
  heldTasks(index: number): number[] {
    const words = this.words;
    const tasks: number[] = [];
    const at = this.heldAt(index);
    for (let i = 0; i < this.held; i++) {
      if (words[at + i] !== 0) tasks.push(words[at + i]! - 1);
    }
    if (tasks.length > 0) return tasks.sort((a, b) => a - b);
    // No table, or an empty one: the range, empty for a worker that keeps a
    // table (its FROM reaches TO as its table empties), and kept alone by a
    // remote stage's stand-in (BatchRunner).
    const from = words[this.at(index, StageStatus.FROM)]!;
    const to = words[this.at(index, StageStatus.TO)]!;
    return Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
  }

  /** The task at each place of worker `index`'s held table, or -1 for a free place. */
  heldPlaces(index: number): number[] {
    const at = this.heldAt(index);
    return Array.from({ length: this.held }, (_, i) => this.words[at + i]! - 1);
  }

  /**
   * Worker `index`, which was lost, holds nothing any more: its held tasks
   * were dropped (read them first with `heldTasks`). For the main thread,
   * once the worker writes no more; its replacement starts from here.
   */
  dropHeld(index: number): void {
    const words = this.words;
    const at = this.heldAt(index);
    for (let i = 0; i < this.held; i++) {
      // Untouched words stay untouched (their pages may be unallocated).
      if (words[at + i] !== 0) words[at + i] = 0;
    }
    // Atomic: SkipReports loads FROM at any time.
    Atomics.store(
      words,
      this.at(index, StageStatus.FROM),
      words[this.at(index, StageStatus.TO)]!,
    );
  }

  /** Tasks the stage has dropped so far. */
  get skipped(): number {
    // Workers add to it at any time: a snapshot, exact once they have exited.
    return Atomics.load(this.words, StageStatus.SKIPPED);
  }
}

/**
 * The held table of a worker that runs several tasks at once (see
 * `StageStatus.HELD`), written by that worker alone with plain stores: a
 * claim's places before any of its tasks starts (so a worker lost in
 * a task leaves the exact set), and the places of written tasks as they are
 * published. The main thread reads the table only once the worker is lost.
 */
export class HeldTable {
  readonly #words: Int32Array;
  readonly #at: number;
  /** Free places, the lowest on top (so a table's far words stay untouched). */
  readonly #free: number[] = [];
  /** Places of tasks written since the last publish. */
  readonly #written: number[] = [];

  /** The held table of worker `index`, empty (see `StageStatus.dropHeld`). */
  constructor(status: StageStatus, index: number) {
    this.#words = status.words;
    this.#at = status.heldAt(index);
    for (let place = status.held - 1; place >= 0; place--) {
      this.#free.push(place);
    }
  }

  /** How many more tasks may be held now. */
  get free(): number {
    return this.#free.length;
  }

  /** Task `seq` is held from now on; returns its place. */
  hold(seq: number): number {
    const place = this.#free.pop()!;
    this.#words[this.#at + place] = seq + 1;
    return place;
  }

  /** The task at `place` was written; it is let go at the next publish. */
  written(place: number): void {
    this.#written.push(place);
  }

  /** What was written is published: its places are free. */
  published(): void {
    const written = this.#written;
    for (let i = 0; i < written.length; i++) {
      this.#words[this.#at + written[i]!] = 0;
      this.#free.push(written[i]!);
    }
    written.length = 0;
  }
}
