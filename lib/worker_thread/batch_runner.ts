/**
 * The loop of a worker whose target takes its tasks in batches, as they are
 * encoded, instead of one `doTask` call each: a remote stage's stand-in
 * (`jetstream/bridge.ts`), which sends them elsewhere. It claims tasks for
 * free slots as the concurrent loop does, and hands each turn's tasks to the
 * target at once. Each task's state lives in arrays indexed by its number
 * modulo their length (grown as needed), not in an object and a Promise of
 * its own.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import type { IdleWait } from "./idle_wait.ts";
import type { LinkReader, RawRecords } from "../shared_memory/link_reader.ts";
import type { WorkerFigures } from "./figures.ts";
import type { WorkerConfig } from "./config.ts";
import { TaskTimeout } from "./task_timeout.ts";

/**
 * What a worker class may offer under `Symbol.for("mpipe.sendTasks")` to
 * take its tasks in batches: the runtime numbers the tasks it claims 0, 1, 2,
 * ... and hands over those of one turn at once: `count` tasks from number
 * `first`, in `records`, whose first `BatchRunner.SEND_HEADER` (32) bytes are
 * free for the stand-in's use, followed by each task's record as the codec
 * encoded it, after its length in LEB128 (7 bits a byte, low first). The
 * buffer is the stand-in's. At most `concurrency` tasks are unsettled at a
 * time. The stand-in settles each task once, in any order, through
 * `settler` (later calls for a task are ignored), and calls
 * `settler.flush()` after a run of them.
 */
export type SendTasks = (
  first: number,
  count: number,
  records: Uint8Array,
  settler: TaskSettler,
) => void;

/** How a batch stand-in settles the tasks it was sent (see `SendTasks`). */
export interface TaskSettler {
  /** Task `task` gave the result encoded in `record` (as the codec does), or none (null). */
  resolve(task: number, record: Uint8Array | null): void;
  /** Task `task` gave several results, encoded, in order. */
  resolveMany(task: number, records: Uint8Array[]): void;
  /** Task `task` failed with `error`: a task error, as if its doTask threw it. */
  reject(task: number, error: unknown): void;
  /** Writes the settled tasks that can be written (in task order for an ordered stage), and publishes them. */
  flush(): void;
}

/** What the batch runner needs of its worker runtime. */
export interface BatchHost {
  readonly config: WorkerConfig;
  readonly input: LinkReader;
  readonly figures: WorkerFigures;
  readonly idleWait: IdleWait;
  /** Writes the results of task `seq`: encoded records (the last one ends the task), or its failure. */
  finishEncoded(
    seq: number,
    records: Uint8Array[] | null,
    error: unknown,
  ): void;
  /** The worker has claimed tasks below `to`. */
  claimedTo(to: number): void;
  /** A replacement would resume at `seq` (the first task not written); `claimed` if none is in flight. */
  resumeAt(seq: number): void;
  /** Publishes what was written. */
  publish(): void;
}

/** Runs one stand-in worker's tasks, in batches. */
export class BatchRunner {
  /** The bytes at the start of a batch's records that are the stand-in's (see `SendTasks`). */
  static readonly SEND_HEADER = 32;
  /** Most tasks claimed at once for a batch. */
  static readonly MAX_CLAIM = 4096;

  // The states of a numbered task.
  static readonly PENDING = 0;
  static readonly RESOLVED = 1;
  static readonly RESOLVED_MANY = 2;
  static readonly FAILED = 3;
  static readonly WRITTEN = 4;

  readonly #host: BatchHost;
  /** Tasks claimed and not yet written. */
  running = 0;
  /** One past the last task claimed (its seq). */
  #claimedTo = 0;
  /**
   * The numbered tasks from `#base` (the oldest not written) to `#next`, at
   * `number & #mask` in each array: state, value (result or error), input
   * seq and start time.
   */
  #base = 0;
  #next = 0;
  #mask = 0;
  #state = new Uint8Array(0);
  #value: unknown[] = [];
  #seq = new Float64Array(0);
  #started = new Float64Array(0);
  /** An unordered stage's tasks settled since the last flush. */
  #settled: number[] = [];
  /** The task being written now, for the error of one that fails. */
  #writing = 0;
  /** A task error to rethrow in the loop (it came in a settler call). */
  #fatal: { error: unknown; seq: number } | null = null;

  constructor(host: BatchHost) {
    this.#host = host;
  }

  /** The task whose error the loop rethrew, for the report. */
  get failedTask(): number | undefined {
    return this.#fatal?.seq;
  }

  /** Claims tasks and sends them on, a turn's at once, until the input ends and nothing is in flight. */
  async run(send: SendTasks): Promise<false> {
    const host = this.#host;
    const { input, idleWait, config } = host;
    const seqs: number[] = [];
    const records = BatchRunner.#records();
    const settler: TaskSettler = {
      resolve: (task, record) =>
        this.#settle(task, BatchRunner.RESOLVED, record),
      resolveMany: (task, list) =>
        this.#settle(task, BatchRunner.RESOLVED_MANY, list),
      reject: (task, error) => this.#settle(task, BatchRunner.FAILED, error),
      flush: () => this.#flush(),
    };
    this.#grow(2 * config.concurrency);
    const timeout = config.taskTimeout;
    const watch = Number.isFinite(timeout)
      ? setInterval(
        () => this.#timeOut(),
        Math.max(5, Math.min(1000, timeout / 4)),
      )
      : undefined;
    let batch = 0;
    let first = 0;
    try {
      for (;;) {
        this.#throwFatal();
        const free = config.concurrency - this.running;
        let count = 0;
        if (free > 0) {
          // As many as there are free slots: the stand-in sends them on
          // together, and each claim may ring a producer that waits for room.
          count = input.claimRaw(
            records,
            seqs,
            Math.min(free, BatchRunner.MAX_CLAIM),
          );
          if (count > 0) {
            idleWait.reset();
            if (this.running === 0) host.figures.busyFrom(performance.now());
            if (batch === 0) first = this.#next;
            batch += count;
            this.#grow(this.#next + count - this.#base);
            const mask = this.#mask;
            const now = watch === undefined ? 0 : performance.now();
            for (let i = 0; i < count; i++) {
              input.taskStarted();
              const at = this.#next++ & mask;
              this.#state[at] = BatchRunner.PENDING;
              this.#seq[at] = seqs[i]!;
              this.#started[at] = now;
            }
            this.running += count;
            this.#claimedTo = seqs[count - 1]! + 1;
            host.claimedTo(this.#claimedTo);
            continue;
          }
        }
        if (batch > 0) {
          // Nothing more to claim now: the turn's tasks go together, with
          // their buffer; a new one, sized for a turn like this one, takes
          // its place.
          const bytes = records.take();
          const sent = batch;
          batch = 0;
          send(first, sent, bytes, settler);
          continue;
        }
        if (count < 0 && this.running === 0) return false;
        // The stand-in's connection runs on this thread's event loop.
        const waiting = idleWait.untilCompletion(count === 0);
        if (waiting !== undefined) await waiting;
      }
    } finally {
      clearInterval(watch);
    }
  }

  /** A buffer of raw records, each after its LEB128 length (see `SendTasks`). */
  static #records(): RawRecords & { take(): Uint8Array } {
    let bytes = new Uint8Array(1 << 14);
    let length = BatchRunner.SEND_HEADER;
    return {
      add(source: Uint8Array, start: number, size: number) {
        const needed = length + 5 + size;
        if (needed > bytes.length) {
          const grown = new Uint8Array(Math.max(needed, 2 * bytes.length));
          grown.set(bytes.subarray(0, length));
          bytes = grown;
        }
        let at = length;
        let n = size;
        while (n >= 0x80) {
          bytes[at++] = (n & 0x7f) | 0x80;
          n >>>= 7;
        }
        bytes[at++] = n;
        if (size <= 64) {
          // A tiny record (the common case): a loop beats subarray and set().
          for (let i = 0; i < size; i++) bytes[at + i] = source[start + i]!;
        } else bytes.set(source.subarray(start, start + size), at);
        length = at + size;
      },
      take() {
        const full = bytes.subarray(0, length);
        // Sized for a turn like this one: a buffer grown once for a large
        // turn is not allocated again for every small one.
        bytes = new Uint8Array(Math.max(1 << 14, length + (length >> 2)));
        length = BatchRunner.SEND_HEADER;
        return full;
      },
    };
  }

  /** Task `task` settled as `state` with `value`; written at the next flush. */
  #settle(task: number, state: number, value: unknown): void {
    if (task < this.#base || task >= this.#next) return;
    const at = task & this.#mask;
    if (this.#state[at] !== BatchRunner.PENDING) return;
    this.#state[at] = state;
    this.#value[at] = value;
    if (!this.#host.config.ordered) this.#settled.push(task);
  }

  /**
   * Writes the settled tasks that may be written, and publishes them: from
   * the oldest while settled for an ordered stage, as they settled for an
   * unordered one. Wakes the loop.
   */
  #flush(): void {
    const host = this.#host;
    const mask = this.#mask;
    const state = this.#state;
    let base = this.#base;
    const before = this.running;
    try {
      if (host.config.ordered) {
        while (
          base < this.#next && state[base & mask] !== BatchRunner.PENDING
        ) {
          this.#write(base++ & mask);
        }
      } else {
        const settled = this.#settled;
        for (let i = 0; i < settled.length; i++) {
          this.#write(settled[i]! & mask);
        }
        settled.length = 0;
        while (
          base < this.#next && state[base & mask] === BatchRunner.WRITTEN
        ) {
          base++;
        }
      }
    } catch (error) {
      this.#fatal ??= { error, seq: this.#writing };
    }
    this.#base = base;
    host.resumeAt(
      base < this.#next ? this.#seq[base & mask]! : this.#claimedTo,
    );
    if (this.running === 0) host.figures.idleFrom(performance.now());
    if (this.running !== before) host.publish();
    host.idleWait.completed();
  }

  /** Writes the results (or the failure) of the settled task in slot `at`. */
  #write(at: number): void {
    const state = this.#state[at]!;
    const value = this.#value[at];
    this.#value[at] = undefined;
    this.#state[at] = BatchRunner.WRITTEN;
    this.running--;
    const seq = this.#seq[at]!;
    this.#writing = seq;
    if (state === BatchRunner.FAILED) {
      return this.#host.finishEncoded(seq, null, value);
    }
    const records = state === BatchRunner.RESOLVED_MANY
      ? value as Uint8Array[]
      : value === null
      ? []
      : [value as Uint8Array];
    this.#host.finishEncoded(seq, records, undefined);
  }

  /** Fails the tasks that have run longer than the taskTimeout. */
  #timeOut(): void {
    const now = performance.now();
    const timeout = this.#host.config.taskTimeout;
    let any = false;
    for (let task = this.#base; task < this.#next; task++) {
      const at = task & this.#mask;
      if (
        this.#state[at] === BatchRunner.PENDING &&
        now - this.#started[at]! > timeout
      ) {
        this.#settle(
          task,
          BatchRunner.FAILED,
          TaskTimeout.error(this.#seq[at]!, timeout),
        );
        any = true;
      }
    }
    if (any) this.#flush();
  }

  /** Makes the arrays hold at least `span` tasks from the oldest on. */
  #grow(span: number): void {
    if (span <= this.#state.length) return;
    let size = Math.max(64, this.#state.length);
    while (size < span) size *= 2;
    const mask = size - 1;
    const state = new Uint8Array(size);
    const value: unknown[] = new Array(size);
    const seq = new Float64Array(size);
    const started = new Float64Array(size);
    for (let task = this.#base; task < this.#next; task++) {
      const from = task & this.#mask;
      const to = task & mask;
      state[to] = this.#state[from]!;
      value[to] = this.#value[from];
      seq[to] = this.#seq[from]!;
      started[to] = this.#started[from]!;
    }
    this.#state = state;
    this.#value = value;
    this.#seq = seq;
    this.#started = started;
    this.#mask = mask;
  }

  #throwFatal(): void {
    if (this.#fatal !== null) throw this.#fatal.error;
  }
}
