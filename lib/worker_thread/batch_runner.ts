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
import { Retries } from "./retries.ts";
import { TaskTimeout } from "./task_timeout.ts";

/**
 * What a worker class may offer under `Symbol.for("mpipe.sendTasks")` to
 * take its tasks in batches: the runtime numbers the tasks it claims 0, 1, 2,
 * ... and hands over those of one turn at once: `count` tasks from number
 * `first`, in `records`, whose first `BatchRunner.SEND_HEADER` (32) bytes are
 * free for the stand-in's use, followed by each task's record as the codec
 * encoded it, after its length in LEB128 (7 bits a byte, low first). The
 * buffer is the stand-in's, but for its records, which it leaves as they
 * are. At most `concurrency` tasks are unsettled at a time. The stand-in
 * settles each task once, in any order, through `settler` (later calls for
 * a task are ignored), and calls `settler.flush()` after a run of them.
 *
 * Under the stage's `retry`, a task rejected is sent again, alone, with the
 * same number, after the retry's delay: the stand-in sends it anew and
 * settles it by the answer to that send (an earlier send's is stale).
 */
export type SendTasks = (
  first: number,
  count: number,
  records: Uint8Array,
  settler: TaskSettler,
) => void;

/**
 * How a task fails (see `TaskSettler.reject`): tried again under the
 * stage's `retry`; for good (it can never be sent); or quarantined (it cost
 * the stage its crashBudget): for good, and counted.
 */
export type Rejection = "retry" | "final" | "quarantined";

/** How a batch stand-in settles the tasks it was sent (see `SendTasks`). */
export interface TaskSettler {
  /** Task `task` gave the result encoded in `record` (as the codec does), or none (null). */
  resolve(task: number, record: Uint8Array | null): void;
  /** Task `task` gave several results, encoded, in order. */
  resolveMany(task: number, records: Uint8Array[]): void;
  /**
   * Task `task` failed with `error`: a task error, as if its doTask threw
   * it, tried again under the stage's `retry` unless `rejection` says not.
   */
  reject(task: number, error: unknown, rejection?: Rejection): void;
  /** Writes the settled tasks that can be written (in task order for an ordered stage), and publishes them. */
  flush(): void;
}

/** What the batch runner needs of its worker runtime. */
export interface BatchHost {
  readonly config: WorkerConfig;
  readonly input: LinkReader;
  readonly figures: WorkerFigures;
  readonly idleWait: IdleWait;
  /** The stage's retry policy, if it retries. */
  readonly retries: Retries | null;
  /** The errors of the attempts of the task failing next (`finishEncoded`), under `retry`. */
  attempts: unknown[] | null;
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
  /** The task being written now, and its attempts' errors, for the error of one that fails. */
  #writing = 0;
  #writingAttempts: unknown[] | undefined = undefined;
  /** A task error to rethrow in the loop (it came in a settler call). */
  #fatal: { error: unknown; seq: number; attempts?: unknown[] } | null = null;
  /**
   * Under `retry`: the turn each unwritten task was sent in (its buffer and
   * first task), from which it is sent again; and the tasks that failed at
   * least once, by number: the attempt running or next, each failed
   * attempt's error, and the timer of the next attempt.
   */
  #turns: ({ bytes: Uint8Array; first: number } | undefined)[] = [];
  readonly #again = new Map<
    number,
    {
      attempt: number;
      errors: unknown[];
      timer: ReturnType<typeof setTimeout> | undefined;
    }
  >();
  #send: SendTasks | null = null;
  #settler: TaskSettler | null = null;
  /** Whether tasks are timed (their start times kept). */
  #timed = false;

  constructor(host: BatchHost) {
    this.#host = host;
  }

  /** The task whose error the loop rethrew, for the report. */
  get failedTask(): number | undefined {
    return this.#fatal?.seq;
  }

  /** The errors of that task's attempts, under `retry`. */
  get failedAttempts(): unknown[] | undefined {
    return this.#fatal?.attempts;
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
      reject: (task, error, rejection = "retry") =>
        this.#settle(task, BatchRunner.FAILED, error, rejection),
      flush: () => this.#flush(),
    };
    this.#send = send;
    this.#settler = settler;
    this.#grow(2 * config.concurrency);
    const timeout = config.taskTimeout;
    this.#timed = Number.isFinite(timeout);
    const watch = this.#timed
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
          if (host.retries !== null) {
            // Kept, to send a failed task again from.
            const turn = { bytes, first };
            for (let i = 0; i < sent; i++) {
              this.#turns[(first + i) & this.#mask] = turn;
            }
          }
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
  #settle(
    task: number,
    state: number,
    value: unknown,
    rejection: Rejection = "retry",
  ): void {
    if (task < this.#base || task >= this.#next) return;
    const at = task & this.#mask;
    if (this.#state[at] !== BatchRunner.PENDING) return;
    // While it waits to be sent again, what comes answers an earlier attempt
    // (one this runner timed out): the next attempt is under way.
    if (this.#again.size > 0 && this.#again.get(task)?.timer !== undefined) {
      return;
    }
    if (state === BatchRunner.FAILED && this.#host.retries !== null) {
      if (rejection !== "retry") {
        // Not tried again: its last attempt's error, after those before.
        this.#again.get(task)?.errors.push(value);
      } else {
        value = this.#retryOr(task, at, value);
        if (value === Retries.AGAIN) return;
      }
    }
    if (rejection === "quarantined") this.#host.figures.quarantined();
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
          this.#write(base++);
        }
      } else {
        const settled = this.#settled;
        for (let i = 0; i < settled.length; i++) {
          this.#write(settled[i]!);
        }
        settled.length = 0;
        while (
          base < this.#next && state[base & mask] === BatchRunner.WRITTEN
        ) {
          base++;
        }
      }
    } catch (error) {
      this.#fatal ??= {
        error,
        seq: this.#writing,
        attempts: this.#writingAttempts,
      };
    }
    this.#base = base;
    host.resumeAt(
      base < this.#next ? this.#seq[base & mask]! : this.#claimedTo,
    );
    if (this.running === 0) host.figures.idleFrom(performance.now());
    if (this.running !== before) host.publish();
    host.idleWait.completed();
  }

  /** Writes the results (or the failure) of settled task `task`. */
  #write(task: number): void {
    const at = task & this.#mask;
    const state = this.#state[at]!;
    const value = this.#value[at];
    this.#value[at] = undefined;
    this.#state[at] = BatchRunner.WRITTEN;
    this.running--;
    const seq = this.#seq[at]!;
    this.#writing = seq;
    let attempts: unknown[] | undefined;
    if (this.#host.retries !== null) {
      this.#turns[at] = undefined;
      const again = this.#again.get(task);
      if (again !== undefined) {
        this.#again.delete(task);
        clearTimeout(again.timer);
        attempts = again.errors;
        if (again.attempt > 1) {
          this.#host.figures.retried(seq, again.attempt);
        }
      }
    }
    this.#writingAttempts = attempts;
    if (state === BatchRunner.FAILED) {
      this.#host.attempts = attempts ?? null;
      return this.#host.finishEncoded(seq, null, value);
    }
    const records = state === BatchRunner.RESOLVED_MANY
      ? value as Uint8Array[]
      : value === null
      ? []
      : [value as Uint8Array];
    this.#host.finishEncoded(seq, records, undefined);
  }

  /**
   * Attempt `attempt` of task `task` (in slot `at`) failed with `error`:
   * sends it again after the policy's delay (`Retries.AGAIN`), or returns
   * its final error. It keeps its slot, so an ordered stage's later results
   * wait for it; its taskTimeout counts afresh from when it is sent again.
   */
  #retryOr(task: number, at: number, error: unknown): unknown {
    const retries = this.#host.retries!;
    let again = this.#again.get(task);
    if (again === undefined) {
      again = { attempt: 1, errors: [], timer: undefined };
      this.#again.set(task, again);
    }
    const final = retries.decide(error, again.attempt);
    again.errors.push(final === Retries.AGAIN ? error : final);
    if (final !== Retries.AGAIN) return final;
    this.#host.figures.retry();
    const ms = Retries.delayMs(retries.config, again.attempt++);
    if (this.#timed) this.#started[at] = performance.now() + ms;
    again.timer = setTimeout(() => this.#sendAgain(task), ms);
    return Retries.AGAIN;
  }

  /** Sends task `task` again, alone, from the turn it was sent in (unless it settled meanwhile). */
  #sendAgain(task: number): void {
    const at = task & this.#mask;
    const again = this.#again.get(task);
    if (again !== undefined) again.timer = undefined;
    if (task < this.#base || this.#state[at] !== BatchRunner.PENDING) return;
    const turn = this.#turns[at];
    if (turn === undefined) {
      // Never expected: fail the task rather than leave it pending for ever.
      this.#settle(
        task,
        BatchRunner.FAILED,
        new Error(
          `task ${task}: its record was not kept, so it cannot be sent again`,
        ),
        "final",
      );
      this.#flush();
      return;
    }
    // Its record: skip the turn's earlier ones (each after its LEB128 length).
    const bytes = turn.bytes;
    let start = BatchRunner.SEND_HEADER;
    let end = start;
    for (let i = turn.first; i <= task; i++) {
      start = end;
      let size = 0;
      let shift = 0;
      let byte: number;
      do {
        byte = bytes[end++]!;
        size += (byte & 0x7f) * 2 ** shift;
        shift += 7;
      } while (byte & 0x80);
      end += size;
    }
    const single = new Uint8Array(BatchRunner.SEND_HEADER + end - start);
    single.set(bytes.subarray(start, end), BatchRunner.SEND_HEADER);
    this.#turns[at] = { bytes: single, first: task };
    try {
      this.#send!(task, 1, single, this.#settler!);
    } catch (error) {
      this.#settle(task, BatchRunner.FAILED, error, "final");
      this.#flush();
    }
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
    const turns = this.#host.retries === null ? this.#turns : new Array(size);
    for (let task = this.#base; task < this.#next; task++) {
      const from = task & this.#mask;
      const to = task & mask;
      state[to] = this.#state[from]!;
      value[to] = this.#value[from];
      seq[to] = this.#seq[from]!;
      started[to] = this.#started[from]!;
      if (turns !== this.#turns) turns[to] = this.#turns[from];
    }
    this.#state = state;
    this.#value = value;
    this.#seq = seq;
    this.#started = started;
    this.#turns = turns;
    this.#mask = mask;
  }

  #throwFatal(): void {
    if (this.#fatal !== null) throw this.#fatal.error;
  }
}
