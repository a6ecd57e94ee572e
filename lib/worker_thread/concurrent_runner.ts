/**
 * The loop of a worker that runs up to `concurrency` tasks at once (the stage
 * option): it claims a task only for a free slot, so the rings stay the only
 * queue, starts it, and while tasks are in flight it waits with `waitAsync`
 * (for a completion, or for input when a slot is free), so that their
 * promises can settle. With nothing in flight it idles as the plain loop
 * does, in `Atomics.wait`. The worker runtime writes each settled task's
 * results (`TaskHost.finish`). Its tasks interleave with the other workers',
 * so it keeps the exact set it holds in shared memory (`HeldTable`), for
 * whoever replaces it if it is lost.
 *
 * A stage with `retry` runs this loop whatever its `concurrency`: a failed
 * attempt keeps its slot (and its place in an ordered stage's order) while
 * it waits for its retry, which decodes the task afresh from the stash
 * (`Retries`).
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import type { IdleWait } from "./idle_wait.ts";
import type { LinkReader } from "../shared_memory/link_reader.ts";
import { HeldTable, type StageStatus } from "../shared_memory/status.ts";
import type { Run } from "./target_loader.ts";
import type { WorkerFigures } from "./figures.ts";
import type { WorkerConfig } from "./config.ts";
import { WorkerScope } from "./scope.ts";
import { TaskTimeout } from "./task_timeout.ts";
import { Retries } from "./retries.ts";

/** A task in flight. */
export interface TaskSlot {
  seq: number;
  /** Its place in the worker's held table. */
  place: number;
  /** It settled: `ok` and `value` say how. */
  settled: boolean;
  ok: boolean;
  value: unknown;
  /** Results it put with `putResult()`, deferred: written with its own result. */
  deferred: Uint8Array[];
  /** Its references to buffers on the arena (see `Arena.takeTask`), or null. */
  refs: number[] | null;
  /** Its taskTimeout's timer, if it awaits. */
  timer: ReturnType<typeof setTimeout> | undefined;
  /** Its results (or its failure) were written. */
  written: boolean;
  /** The attempt running or next (1 for the first), under `retry`. */
  attempt: number;
  /** The errors of its failed attempts so far, under `retry`. */
  errors: unknown[] | null;
  /** Its record, as stashed (under `retry`). */
  record: Uint8Array | null;
  /** A task a lost worker held, dropped: its replacement only closes it. */
  closed: boolean;
}

/** What the runner needs of its worker runtime. */
export interface TaskHost {
  readonly config: WorkerConfig;
  readonly input: LinkReader;
  readonly status: StageStatus;
  readonly figures: WorkerFigures;
  readonly idleWait: IdleWait;
  /** The stage's retry policy and the stash, if it retries. */
  readonly retries: Retries | null;
  /** Task `seq` starts now (its synchronous part is watched if timed). */
  begin(seq: number): void;
  /** The running task's synchronous part returned; returns its ms if timed (else 0). */
  syncReturned(): number;
  /** Writes a settled task's results (or skips it, or throws under "fail"). */
  finish(slot: TaskSlot): void;
  /** The references to the arena that came with `task`, or null. */
  takeRefs(task: unknown): number[] | null;
  /** The worker has claimed tasks below `to`. */
  claimedTo(to: number): void;
  /** A replacement would resume at `seq` (the first task not written). */
  resumeAt(seq: number): void;
  /** Publishes what was written. */
  publish(): void;
}

/** Runs one worker's tasks, several at once. */
export class ConcurrentRunner {
  readonly #host: TaskHost;
  /**
   * The tasks claimed, in order, from `#head` on: the slots before it were
   * written (dropped in bulk, so that each slot is moved once on average).
   */
  readonly #slots: TaskSlot[] = [];
  #head = 0;
  /** Tasks claimed and not yet written. */
  running = 0;
  /** An unordered stage's settled tasks not yet written, in the order they settled. */
  readonly #settled: TaskSlot[] = [];
  /** A write of settled tasks is queued (see `#settle`). */
  #writeQueued = false;
  /** The task whose synchronous part runs now, for putResult(). */
  current: TaskSlot | null = null;

  /**
   * The task a putResult() belongs to: the one whose synchronous part runs,
   * or, at concurrency 1 (a stage that runs this loop for `retry`), the one
   * task in flight, after an await as well (as without `retry`).
   */
  get putting(): TaskSlot | null {
    if (this.current !== null || this.#host.config.concurrency > 1) {
      return this.current;
    }
    const slots = this.#slots;
    for (let i = this.#head; i < slots.length; i++) {
      if (!slots[i]!.settled) return slots[i]!;
    }
    return null;
  }
  /** One past the last task claimed. */
  #claimedTo = 0;
  /** A task error to rethrow in the loop (it came in a promise callback). */
  #fatal: { error: unknown; seq: number; attempts: unknown[] | null } | null =
    null;
  #run: Run = () => undefined;
  /**
   * The tasks held (claimed, their results not yet published), in shared
   * memory: what a replacement drops if this worker is lost (see Supervisor).
   */
  readonly #held: HeldTable;

  constructor(host: TaskHost) {
    this.#host = host;
    this.#held = new HeldTable(host.status, host.config.index);
  }

  /** What was written is published (the runtime calls this after each publish). */
  published(): void {
    this.#held.published();
  }

  /**
   * Claims and runs tasks until the input ends and nothing is in flight
   * (false), or until the worker leaves its elastic stage with nothing in
   * flight (true).
   */
  async run(run: Run): Promise<boolean> {
    const host = this.#host;
    const { input, idleWait, config } = host;
    const values: unknown[] = [];
    const seqs: number[] = [];
    const places: number[] = [];
    const held = this.#held;
    const retries = host.retries;
    this.#run = run;
    for (;;) {
      this.#throwFatal();
      // A slot is free once its task's results are published.
      const free = held.free;
      let count = 0;
      if (free > 0) {
        const max = Math.min(free, config.maxClaim);
        count = retries === null
          ? input.claim(values, seqs, max)
          : input.claimRaw(retries.raw, seqs, max);
        if (count > 0) {
          idleWait.reset();
          // Busy from now until nothing is in flight again (see #writeSettled).
          if (this.running === 0) host.figures.busyFrom(performance.now());
          // Held before any of them starts: a worker lost in a task's
          // synchronous part leaves the exact set it held.
          for (let i = 0; i < count; i++) places[i] = held.hold(seqs[i]!);
          this.#claimedTo = seqs[count - 1]! + 1;
          host.claimedTo(this.#claimedTo);
          host.figures.claimed(this.running + count);
          // Stashed before any of them starts, as they are held.
          for (let i = 0; retries !== null && i < count; i++) {
            retries.stash(places[i]!, retries.records[i]!, 1);
          }
          for (let i = 0; i < count; i++) {
            const task = values[i];
            values[i] = undefined;
            input.taskStarted();
            const slot = this.#slot(seqs[i]!, places[i]!);
            if (retries === null) {
              slot.refs = this.#host.takeRefs(task);
              this.#attempt(slot, task);
            } else {
              slot.record = retries.records[i]!;
              this.#attempt(slot, retries.decode(slot.record));
            }
          }
          if (retries !== null) retries.records.length = 0;
          this.#writeSettled();
          continue;
        }
        if (count < 0 && this.running === 0) return false;
      }
      if (this.running === 0) {
        if (idleWait.idle()) return true;
        continue;
      }
      // Tasks in flight: arm the input's bell, look once more, then wait.
      const waiting = idleWait.untilCompletion(count === 0);
      if (waiting !== undefined) {
        const from = performance.now();
        await waiting;
        host.figures.awaited(performance.now() - from);
      }
    }
  }

  /** A new slot for task `seq`, held at `place`, in flight. */
  #slot(seq: number, place: number): TaskSlot {
    const slot: TaskSlot = {
      seq,
      place,
      settled: false,
      ok: true,
      value: undefined,
      deferred: [],
      refs: null,
      timer: undefined,
      written: false,
      attempt: 1,
      errors: null,
      record: null,
      closed: false,
    };
    this.#slots.push(slot);
    this.running++;
    return slot;
  }

  /**
   * Runs an attempt of a slot's task up to its first await. A synchronous
   * end is noted at once (the caller writes it); an asynchronous one
   * settles through `#settle`.
   */
  #attempt(slot: TaskSlot, task: unknown): void {
    const host = this.#host;
    const { seq, attempt } = slot;
    const retries = host.retries;
    host.begin(seq);
    this.current = slot;
    retries?.running(slot.place, true);
    let result: unknown;
    let ok = true;
    try {
      result = this.#run(task);
    } catch (error) {
      result = error;
      ok = false;
    }
    retries?.running(slot.place, false);
    this.current = null;
    const elapsed = host.syncReturned();
    const timeout = host.config.taskTimeout;
    if (elapsed > timeout) {
      // Its synchronous part ran too long, though it returned before the
      // watchdog saw it (a busy main thread looks late): timed out all the
      // same. A promise it returned is ignored.
      if (ok && WorkerScope.isThenable(result)) {
        Promise.resolve(result).catch(() => {});
      }
      ok = false;
      slot.deferred.length = 0;
      result = TaskTimeout.error(seq, timeout, elapsed);
    } else if (ok && WorkerScope.isThenable(result)) {
      Promise.resolve(result).then(
        (value) => this.#settle(slot, attempt, true, value),
        (error) => this.#settle(slot, attempt, false, error),
      );
      // The synchronous part was watched; an await past the rest of the
      // timeout is caught by a timer of its own.
      if (timeout !== Infinity) {
        slot.timer = setTimeout(
          () =>
            this.#settle(slot, attempt, false, TaskTimeout.error(seq, timeout)),
          timeout - elapsed,
        );
      }
      return;
    }
    if (!ok && retries !== null) {
      result = this.#retryOr(slot, result);
      if (result === Retries.AGAIN) return;
    }
    slot.settled = true;
    slot.ok = ok;
    slot.value = result;
    retries?.idle(slot.place);
    if (!host.config.ordered) this.#settled.push(slot);
  }

  /**
   * Attempt `slot.attempt` failed with `error`: tries the task again after
   * the policy's delay (`Retries.AGAIN`), or returns its final error.
   */
  #retryOr(slot: TaskSlot, error: unknown): unknown {
    const host = this.#host;
    const retries = host.retries!;
    const errors = slot.errors ??= [];
    const final = retries.decide(error, slot.attempt);
    errors.push(final === Retries.AGAIN ? error : final);
    if (final !== Retries.AGAIN) return final;
    slot.deferred.length = 0;
    host.figures.retry();
    const ms = Retries.delayMs(retries.config, slot.attempt++);
    // Lost while it waits, it runs its next attempt on the replacement.
    retries.attempt(slot.place, slot.attempt);
    retries.idle(slot.place);
    this.#again(slot, ms);
    return Retries.AGAIN;
  }

  /** Runs the slot's next attempt in `ms`, and writes it if it ends at once. */
  #again(slot: TaskSlot, ms: number): void {
    const retries = this.#host.retries!;
    slot.timer = setTimeout(() => {
      slot.timer = undefined;
      retries.attempt(slot.place, slot.attempt);
      this.#attempt(slot, retries.decode(slot.record!));
      if (slot.settled) this.#queueWrite();
    }, ms);
  }

  /**
   * Takes over the tasks a lost worker held, in order: those it dropped are
   * only closed (an ordered stage's merge waits for them), the others are
   * tried again, each after its delay (at once if run again: see
   * `RetriedTask.rerun`).
   */
  recover(
    closed: readonly number[],
    retried: readonly {
      seq: number;
      record: Uint8Array;
      attempt: number;
      errors: unknown[];
      rerun: boolean;
    }[],
    to: number,
  ): void {
    const host = this.#host;
    const retries = host.retries!;
    const tasks = [
      ...(host.config.ordered && !host.config.disableResult ? closed : []),
      ...retried.map((task) => task.seq),
    ].sort((a, b) => a - b);
    for (const seq of tasks) {
      const slot = this.#slot(seq, this.#held.hold(seq));
      const again = retried.find((task) => task.seq === seq);
      if (again === undefined) {
        retries.stash(slot.place, new Uint8Array(0), Retries.CLOSED);
        slot.closed = slot.settled = true;
        continue;
      }
      slot.record = again.record;
      slot.attempt = again.attempt;
      slot.errors = again.errors;
      retries.stash(slot.place, slot.record, slot.attempt);
      if (again.rerun) this.#again(slot, 0);
      else {
        host.figures.retry();
        this.#again(slot, Retries.delayMs(retries.config, slot.attempt - 1));
      }
    }
    this.#claimedTo = to;
    host.claimedTo(to);
    if (this.running > 0) host.figures.busyFrom(performance.now());
    this.#writeSettled();
    // Published at once, so that the place's first task not finished (read
    // by SkipReports) is the first one retried, not the lost worker's end.
    host.publish();
  }

  /**
   * A task in flight settled: note it, and write what may be written. Tasks
   * that settle together (promises resolved in one go) are written together,
   * by one write queued after their callbacks, and published once.
   */
  #settle(
    slot: TaskSlot,
    attempt: number,
    ok: boolean,
    value: unknown,
  ): void {
    // A late settle of an attempt that timed out.
    if (slot.settled || attempt !== slot.attempt) return;
    clearTimeout(slot.timer);
    if (!ok && this.#host.retries !== null) {
      value = this.#retryOr(slot, value);
      if (value === Retries.AGAIN) return;
    }
    slot.settled = true;
    slot.ok = ok;
    slot.value = value;
    this.#host.retries?.idle(slot.place);
    if (!this.#host.config.ordered) this.#settled.push(slot);
    this.#queueWrite();
  }

  /** Queues one write of the tasks that settle together, which then wakes the loop. */
  #queueWrite(): void {
    if (this.#writeQueued) return;
    this.#writeQueued = true;
    queueMicrotask(this.#writeQueuedTasks);
  }

  /** The write queued by `#settle`, which then wakes the loop. */
  readonly #writeQueuedTasks = (): void => {
    this.#writeQueued = false;
    try {
      this.#writeSettled();
    } catch {
      // #writeSettled kept the error for the loop to rethrow.
    }
    this.#host.idleWait.completed();
  };

  /**
   * Writes the settled tasks that may be written: in task order for an
   * ordered stage (a worker's ring must hold its tasks in order), as they
   * settled otherwise; each task is looked at once. Publishes what it wrote.
   */
  #writeSettled(): void {
    const host = this.#host;
    const slots = this.#slots;
    let head = this.#head;
    let wrote = false;
    if (host.config.ordered) {
      while (head < slots.length && slots[head]!.settled) {
        this.#write(slots[head++]!);
        wrote = true;
      }
    } else {
      const settled = this.#settled;
      for (let i = 0; i < settled.length; i++) this.#write(settled[i]!);
      wrote = settled.length > 0;
      settled.length = 0;
      while (head < slots.length && slots[head]!.written) head++;
    }
    if (head > 64 && head * 2 > slots.length) {
      slots.splice(0, head);
      head = 0;
    }
    this.#head = head;
    host.resumeAt(head < slots.length ? slots[head]!.seq : this.#claimedTo);
    if (this.running === 0) host.figures.idleFrom(performance.now());
    if (wrote) host.publish();
  }

  /** Writes one settled task's results (or its failure). */
  #write(slot: TaskSlot): void {
    slot.written = true;
    this.running--;
    try {
      this.#host.finish(slot);
      this.#held.written(slot.place);
    } catch (error) {
      // Rethrown in the loop (see #writeQueuedTasks), naming this task.
      this.#fatal ??= { error, seq: slot.seq, attempts: slot.errors };
      throw error;
    }
  }

  #throwFatal(): void {
    const fatal = this.#fatal;
    if (fatal === null) return;
    throw fatal.error;
  }

  /** The task whose error the loop last rethrew, for the report. */
  get failedTask(): number | undefined {
    return this.#fatal?.seq;
  }

  /** The errors of that task's attempts, under `retry`. */
  get failedAttempts(): unknown[] | undefined {
    return this.#fatal?.attempts ?? undefined;
  }
}
