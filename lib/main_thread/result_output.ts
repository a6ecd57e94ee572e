/**
 * The pipeline's output: the main thread as the only consumer of every leaf
 * stage's link. A reader takes results that are already here without
 * waiting; otherwise it spins briefly on the result bell, then sleeps in
 * `Atomics.waitAsync` (the main thread never blocks).
 *
 * @module
 */

import { Bell } from "../shared_memory/bell.ts";
import { ClaimPolicy } from "../shared_memory/claim_policy.ts";
import type { LinkReader } from "../shared_memory/link_reader.ts";
import type { GetOptions } from "../stage/stage.ts";
import type { AnyStage } from "../stage/internals.ts";
import { internalsOf } from "../stage/internals.ts";
import { checkCallOptions } from "./options.ts";
import type { RunView } from "./run_state.ts";
import type { InputPump, ResultWaker } from "./task_input.ts";
import type { FailureReport } from "./failure_report.ts";

/** What the output needs of the supervisor: the `onError` callbacks still to run. */
export interface CallbackGate {
  /** A promise that settles once every callback reported so far has run, or null if none is pending. */
  pending(): Promise<void> | null;
}

/** A leaf stage's output, read on the main thread. */
interface Leaf {
  stage: AnyStage;
  /** Null until the workers start (a Stage of a module target is inspected first). */
  link: LinkReader | null;
  /**
   * Results claimed and not yet read: `queue[head, end)`. The array keeps its
   * length, so claims do not regrow it.
   */
  queue: unknown[];
  head: number;
  end: number;
  /** Its link is emptied for good: every producer stopped and every record was claimed. */
  emptied: boolean;
  /** A reader reads it, and has not yet seen its end: that reader will see a failure. */
  reading: boolean;
}

const RESOLVED = Promise.resolve();

/** The error of a `get` whose timeout passed. */
function timedOut(timeout: number | undefined): DOMException {
  return new DOMException(
    `get() timed out after ${timeout} ms; nothing was lost: call get() again to wait longer`,
    "TimeoutError",
  );
}
/** The readers asleep on one value of the result bell's counter. */
interface Sleep {
  counter: number;
  waiters: Set<() => void>;
}

/** What `take` returns when no result is here. */
const NONE: unique symbol = Symbol("none");

/** The main thread's side of every leaf stage's link. */
export class ResultOutput implements ResultWaker {
  readonly #run: RunView;
  readonly #report: FailureReport;
  readonly #callbacks: CallbackGate;
  readonly #resultBell: Int32Array;
  /** Raised by a worker that fails the pipeline, before its message comes (see `Dismissal.fail`). */
  readonly #failureWord: Int32Array;
  readonly #spin: number;
  readonly #leaves: Leaf[];
  #pump: InputPump | null = null;
  /** The leaf the last result came from: reading resumes there, for fairness. */
  #nextLeaf = 0;
  #seqs: number[] = [];
  /** The readers' shared sleep in `waitAsync`, which `put` also ends when results are here. */
  #sleep: Sleep | null = null;
  /** Whether anything ever read results, and so will see a failure there. */
  #readerAttached = false;
  /** A reader reads every leaf (see `#attach`). */
  #readingAll = false;
  /** Called once a reader has read every result (see `whenReadToEnd`). */
  #onReadToEnd: (() => void)[] = [];
  /** Called once every leaf's link is emptied (see `whenEmptied`). */
  #onEmptied: (() => void) | null = null;
  /** Results handed to readers, however they read them. */
  #read = 0;

  constructor(
    run: RunView,
    report: FailureReport,
    callbacks: CallbackGate,
    leaves: AnyStage[],
    resultBell: Int32Array,
    failureWord: Int32Array,
    spin: number,
  ) {
    this.#run = run;
    this.#report = report;
    this.#callbacks = callbacks;
    this.#resultBell = resultBell;
    this.#failureWord = failureWord;
    this.#spin = spin;
    this.#leaves = leaves.map((stage) => ({
      stage,
      link: null,
      queue: [],
      head: 0,
      end: 0,
      emptied: false,
      reading: false,
    }));
  }

  /** The input to pump while reading (see `InputPump`). */
  set pump(pump: InputPump) {
    this.#pump = pump;
  }

  /** Connects each leaf to its link, once the workers start. */
  connect(linkOf: (stage: AnyStage) => LinkReader): void {
    for (const leaf of this.#leaves) leaf.link = linkOf(leaf.stage);
  }

  /**
   * Calls `callback` once every result has been read (at once if they have
   * been, or if nothing reads them).
   */
  whenReadToEnd(callback: () => void): void {
    if (!this.#readerAttached || this.#exhausted(null)) return callback();
    this.#onReadToEnd.push(callback);
  }

  /**
   * Calls `callback` once every leaf's link is emptied: every result was
   * taken from the rings (some may still wait here for a reader), so the
   * main thread reads them no more.
   */
  whenEmptied(callback: () => void): void {
    if (this.#leaves.every((leaf) => leaf.emptied)) callback();
    else this.#onEmptied = callback;
  }

  #readToEnd(): void {
    for (const callback of this.#onReadToEnd.splice(0)) callback();
  }

  /**
   * Whether a reader reads a leaf whose end it has not seen: a failure
   * reaches that reader (a fork's leaf read to its end sees no failure).
   */
  get stillReading(): boolean {
    return this.#leaves.some((leaf) => leaf.reading);
  }

  /** `leaf` (null: every leaf) has a reader, until it sees the end. */
  #attach(leaf: Leaf | null): void {
    this.#readerAttached = true;
    if (leaf !== null) leaf.reading = true;
    else if (!this.#readingAll) {
      this.#readingAll = true;
      for (const each of this.#leaves) each.reading = true;
    }
  }

  /** Results read so far (`get`, `results()`, a leaf's reads): every read takes them here. */
  get read(): number {
    return this.#read;
  }

  get readersAsleep(): boolean {
    return this.#sleep !== null;
  }

  /** The run was cut short: wakes every waiting reader. */
  cutShort(): void {
    Bell.ringAlways(this.#resultBell, 0);
    // Directly too: a `waitAsync` wake-up does not keep the process alive,
    // and there may be nothing else left to (a module that failed to load).
    this.#wake(this.#sleep);
  }

  /** See `Pipeline.results`; `stage` is a leaf, or null for every leaf. */
  results(
    stage: AnyStage | null,
    options: GetOptions | undefined,
  ): AsyncIterableIterator<unknown> {
    const leaf = this.#leafOf(stage);
    checkCallOptions("results", options);
    this.#attach(leaf);
    return new ResultIterator(
      () => this.#take(leaf),
      () => this.#get(leaf, options),
    );
  }

  /**
   * Hands up to `max` results that are already here to `enqueue`, without
   * waiting; returns how many (a readable stream fills its queue so).
   */
  takeInto(enqueue: (result: unknown) => void, max: number): number {
    this.#attach(null);
    let count = 0;
    while (count < max) {
      const value = this.#take(null);
      if (value === NONE) break;
      enqueue(value);
      count++;
    }
    return count;
  }

  /** See `Pipeline.get`; `stage` is a leaf, or null for every leaf. */
  get(
    stage: AnyStage | null,
    options: GetOptions | undefined,
  ): Promise<unknown> {
    return this.#get(this.#leafOf(stage), options);
  }

  async #get(
    leaf: Leaf | null,
    options: GetOptions | undefined,
  ): Promise<unknown> {
    this.#attach(leaf);
    const { timeout, signal } = checkCallOptions("get", options);
    const deadline = timeout === undefined ? Infinity : Date.now() + timeout;
    for (;;) {
      this.#throwIfFailed();
      const value = this.#take(leaf);
      if (value !== NONE) return value;
      if (this.#exhausted(leaf)) {
        // The input side cut the run short: the reader gets why, not the end.
        if (this.#run.abortedBy !== null) {
          this.#report.observed();
          throw this.#run.abortedBy.reason;
        }
        if (await this.#callbacksRun()) continue;
        for (const read of leaf === null ? this.#leaves : [leaf]) {
          read.reading = false;
        }
        if (this.#exhausted(null)) this.#readToEnd();
        return null;
      }
      const counter = Bell.arm(this.#resultBell, 0);
      const again = this.#take(leaf);
      if (again !== NONE) return again;
      if (this.#exhausted(leaf) || this.#run.failure !== null) continue;
      // Before sleeping, move the input on: its own wake-up could come late.
      this.#pump!.publish();
      this.#pump!.pump();
      // A worker failed the pipeline: sleep, so that its message comes in.
      if (!this.#failing() && this.#spinForOutput(counter)) continue;
      await this.#waitForOutput(counter, deadline, timeout, signal);
    }
  }

  #throwIfFailed(): void {
    const failure = this.#run.failure;
    if (failure === null) return;
    this.#report.observed();
    throw failure;
  }

  /**
   * Before a reader sees the end: lets the `onError` callbacks of skipped
   * tasks run, whose messages may still be on their way. True if the reader
   * must look again (the pipeline may have failed meanwhile).
   */
  async #callbacksRun(): Promise<boolean> {
    const pending = this.#callbacks.pending();
    // The reports that had come may have run just now, and a callback that
    // threw has failed the pipeline: look again, to throw that failure.
    if (pending === null) return this.#run.failure !== null;
    await pending;
    return true;
  }

  /**
   * Watches the doorbell a bounded number of times before sleeping: a result
   * that is microseconds away is worth a short spin, since a `waitAsync`
   * wake-up costs tens of microseconds. The bell, armed with `counter`, moves
   * only when something new is published; records already in the rings may
   * be ones an ordered merge cannot take yet.
   */
  #spinForOutput(counter: number): boolean {
    for (let spin = 0; spin < this.#spin; spin++) {
      if (Atomics.load(this.#resultBell, Bell.COUNTER) !== counter) return true;
    }
    return false;
  }

  /**
   * Sleeps until the result bell moves past `counter`, `put` sees results, or
   * the pipeline ends; or until this reader's deadline or signal. Every
   * reader asleep on the same counter shares one sleep, and one that gives
   * up leaves nothing behind.
   */
  #waitForOutput(
    counter: number,
    deadline: number,
    timeout: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    signal?.throwIfAborted();
    const left = deadline - Date.now();
    if (left <= 0) throw timedOut(timeout);
    const sleep = this.#sleepOn(counter);
    if (sleep === null) return RESOLVED;
    return new Promise((resolve, reject) => {
      // A reader that gives up takes itself out of the sleep: nothing of it
      // stays behind, however many give up.
      const leave = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        sleep.waiters.delete(wake);
      };
      const wake = () => {
        leave();
        resolve();
      };
      const onAbort = () => {
        leave();
        reject(signal!.reason);
      };
      const timer = left === Infinity ? undefined : setTimeout(() => {
        leave();
        reject(timedOut(timeout));
      }, left);
      signal?.addEventListener("abort", onAbort, { once: true });
      sleep.waiters.add(wake);
    });
  }

  /**
   * The readers' shared sleep on `counter`, made on first need; null if the
   * counter has moved already (look again).
   */
  #sleepOn(counter: number): Sleep | null {
    const current = this.#sleep;
    if (current !== null && current.counter === counter) return current;
    // Sleeps only if the counter still holds the value armed before the last
    // look; a publish since then has moved it, and the wait returns at once.
    const wait = Atomics.waitAsync(this.#resultBell, Bell.COUNTER, counter);
    if (!wait.async) return null;
    const sleep: Sleep = { counter, waiters: new Set() };
    this.#sleep = sleep;
    // Whichever comes first: a worker's doorbell, or `put` seeing results
    // (a doorbell wake-up waits behind the producer's microtasks).
    wait.value.then(() => this.#wake(sleep));
    return sleep;
  }

  /** Ends a shared sleep (an older one than the current ends when its own wait does). */
  #wake(sleep: Sleep | null): void {
    if (sleep === null) return;
    if (this.#sleep === sleep) this.#sleep = null;
    for (const wake of [...sleep.waiters]) wake();
  }

  wakeIfResults(): void {
    // A loop, not some(): this runs on every put while a reader waits.
    const leaves = this.#leaves;
    for (let i = 0; i < leaves.length; i++) {
      if (leaves[i]!.link?.hasData()) return this.#wake(this.#sleep);
    }
  }

  /** Takes one result that is already here, or NONE (none after a failure or terminate()). */
  #take(leaf: Leaf | null): unknown {
    if (this.#run.failure !== null || this.#run.terminated) return NONE;
    if (leaf !== null) return this.#takeFrom(leaf);
    const leaves = this.#leaves;
    for (let i = 0; i < leaves.length; i++) {
      const at = (this.#nextLeaf + i) % leaves.length;
      const value = this.#takeFrom(leaves[at]!);
      if (value !== NONE) {
        this.#nextLeaf = at;
        return value;
      }
    }
    return NONE;
  }

  #takeFrom(leaf: Leaf): unknown {
    if (leaf.head === leaf.end) {
      // Once per claim: after a worker failed the pipeline, nothing more is
      // taken, so the reader waits for the failure's message (a macrotask)
      // instead of reading on behind it.
      if (leaf.emptied || this.#failing()) return NONE;
      this.#pump!.pump();
      if (leaf.link === null) return NONE;
      const count = leaf.link.claim(leaf.queue, this.#seqs, ClaimPolicy.READER);
      if (count < 0) this.#leafEmptied(leaf);
      if (count <= 0) return NONE;
      leaf.head = 0;
      leaf.end = count;
    }
    const value = leaf.queue[leaf.head];
    leaf.queue[leaf.head++] = undefined;
    this.#read++;
    return value;
  }

  /** Whether a worker failed the pipeline (its message may not have come yet). */
  #failing(): boolean {
    return Atomics.load(this.#failureWord, 0) !== 0;
  }

  /** Every record of `leaf`'s link was taken: its rings are read no more. */
  #leafEmptied(leaf: Leaf): void {
    leaf.emptied = true;
    leaf.link = null;
    const emptied = this.#onEmptied;
    if (emptied !== null && this.#leaves.every((l) => l.emptied)) {
      this.#onEmptied = null;
      emptied();
    }
  }

  /** Whether no result will ever come (from `leaf`, or from any leaf). */
  #exhausted(leaf: Leaf | null): boolean {
    if (this.#run.terminated) return true;
    const done = (l: Leaf) => l.emptied && l.head === l.end;
    return leaf !== null ? done(leaf) : this.#leaves.every(done) &&
      this.#leaves.length > 0;
  }

  /** The leaf of `stage`, or null for null; throws a `TypeError` for a stage that is not a leaf. */
  #leafOf(stage: AnyStage | null): Leaf | null {
    if (stage === null) return null;
    const leaf = this.#leaves.find((l) => l.stage === stage);
    if (leaf !== undefined) return leaf;
    const next = internalsOf(stage).next.map((s) => `'${s.name}'`).join(", ");
    throw new TypeError(
      `Stage '${stage.name}' is not a leaf stage: its results go to ${next}; read the results of a leaf stage, or of the pipeline`,
    );
  }
}

/**
 * The iterator of `results()`: hands out a result that is already here in an
 * already-settled Promise, which costs far less than an async generator.
 */
class ResultIterator implements AsyncIterableIterator<unknown> {
  #take: () => unknown;
  #get: () => Promise<unknown>;
  /** It returned `done` (the end, an error or `return()`): it stays done. */
  #done = false;

  constructor(take: () => unknown, get: () => Promise<unknown>) {
    this.#take = take;
    this.#get = get;
  }

  next(): Promise<IteratorResult<unknown>> {
    if (this.#done) {
      return Promise.resolve({ value: undefined, done: true });
    }
    const value = this.#take();
    if (value !== NONE) return Promise.resolve({ value, done: false });
    return this.#get().then(
      (next): IteratorResult<unknown> => {
        if (next !== null) return { value: next, done: false };
        this.#done = true;
        return { value: undefined, done: true };
      },
      (error) => {
        this.#done = true;
        throw error;
      },
    );
  }

  return(): Promise<IteratorResult<unknown>> {
    this.#done = true;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<unknown> {
    return this;
  }
}
