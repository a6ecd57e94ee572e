/**
 * The pipeline's output: the main thread as the only consumer of every leaf
 * stage's link. A reader takes results that are already here without
 * waiting; otherwise it spins briefly on the result bell, then sleeps in
 * `Atomics.waitAsync` (the main thread never blocks).
 *
 * @module
 */

import { Bell } from "./bell.ts";
import { ClaimPolicy } from "./claim_policy.ts";
import type { InputLink } from "./link.ts";
import type { GetOptions } from "./stage.ts";
import type { AnyStage } from "./stage_internals.ts";
import { internalsOf } from "./stage_internals.ts";
import { checkCallOptions } from "./options.ts";
import type { RunView } from "./run_state.ts";
import type { InputPump, ResultWaker } from "./task_input.ts";

/** A leaf stage's output, read on the main thread. */
interface Leaf {
  stage: AnyStage;
  /** Null until the workers start (a Stage of a module target is inspected first). */
  link: InputLink | null;
  /**
   * Results claimed and not yet read: `queue[head, end)`. The array keeps its
   * length, so claims do not regrow it.
   */
  queue: unknown[];
  head: number;
  end: number;
  /** Every upstream producer has stopped and every record was claimed. */
  ended: boolean;
}

const RESOLVED = Promise.resolve();
/** What `take` returns when no result is here. */
const NONE: unique symbol = Symbol("none");

/** The main thread's side of every leaf stage's link. */
export class ResultOutput implements ResultWaker {
  readonly #run: RunView;
  readonly #resultBell: Int32Array;
  readonly #spin: number;
  readonly #leaves: Leaf[];
  #pump: InputPump | null = null;
  /** The leaf the last result came from: reading resumes there, for fairness. */
  #nextLeaf = 0;
  #seqs: number[] = [];
  /** Readers sleeping in `waitAsync`, which `put` wakes when results are here. */
  #readers: (() => void)[] = [];
  /** Whether anything ever read results, and so will see a failure there. */
  #readerAttached = false;

  constructor(
    run: RunView,
    leaves: AnyStage[],
    resultBell: Int32Array,
    spin: number,
  ) {
    this.#run = run;
    this.#resultBell = resultBell;
    this.#spin = spin;
    this.#leaves = leaves.map((stage) => ({
      stage,
      link: null,
      queue: [],
      head: 0,
      end: 0,
      ended: false,
    }));
  }

  /** The input to pump while reading (see `InputPump`). */
  set pump(pump: InputPump) {
    this.#pump = pump;
  }

  /** Connects each leaf to its link, once the workers start. */
  connect(linkOf: (stage: AnyStage) => InputLink): void {
    for (const leaf of this.#leaves) leaf.link = linkOf(leaf.stage);
  }

  /** Whether anything ever read results (`get`, `results()`, iteration). */
  get readerAttached(): boolean {
    return this.#readerAttached;
  }

  get readersAsleep(): boolean {
    return this.#readers.length !== 0;
  }

  /** Wakes every waiting reader: the pipeline ended. */
  shutDown(): void {
    Bell.ringAlways(this.#resultBell, 0);
  }

  /** See `Pipeline.results`; `stage` is a leaf, or null for every leaf. */
  results(
    stage: AnyStage | null,
    options: GetOptions | undefined,
  ): AsyncIterableIterator<unknown> {
    const leaf = this.#leafOf(stage);
    checkCallOptions("results", options);
    this.#readerAttached = true;
    return new ResultIterator(
      () => this.#take(leaf),
      () => this.#get(leaf, options),
    );
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
    this.#readerAttached = true;
    const { timeout, signal } = checkCallOptions("get", options);
    const deadline = timeout === undefined ? Infinity : Date.now() + timeout;
    for (;;) {
      if (this.#run.failure !== null) throw this.#run.failure;
      const value = this.#take(leaf);
      if (value !== NONE) return value;
      if (this.#ended(leaf)) return null;
      const counter = Bell.arm(this.#resultBell, 0);
      const again = this.#take(leaf);
      if (again !== NONE) return again;
      if (this.#ended(leaf) || this.#run.failure !== null) continue;
      // Before sleeping, move the input on: its own wake-up could come late.
      this.#pump!.publish();
      this.#pump!.pump();
      if (this.#spinForOutput(counter)) continue;
      await this.#waitForOutput(counter, deadline, timeout, signal);
    }
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

  #waitForOutput(
    counter: number,
    deadline: number,
    timeout: number | undefined,
    signal: AbortSignal | undefined,
  ): Promise<unknown> {
    signal?.throwIfAborted();
    const left = deadline - Date.now();
    const timedOut = () =>
      new DOMException(
        `get() timed out after ${timeout} ms; nothing was lost: call get() again to wait longer`,
        "TimeoutError",
      );
    if (left <= 0) throw timedOut();
    // Sleeps only if the counter still holds the value armed before the last
    // look; a publish since then has moved it, and the wait returns at once.
    const wait = Atomics.waitAsync(
      this.#resultBell,
      Bell.COUNTER,
      counter,
      left === Infinity ? undefined : left,
    );
    if (!wait.async) return RESOLVED;
    // Whichever comes first: a worker's doorbell, or `put` seeing results
    // (a doorbell wake-up waits behind the producer's microtasks).
    const woken = Promise.race([
      wait.value,
      new Promise<"ok">((resolve) => this.#readers.push(() => resolve("ok"))),
    ]).then((result) => {
      if (result === "timed-out") throw timedOut();
    });
    if (signal === undefined) return woken;
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      woken.then(resolve, reject).finally(() =>
        signal.removeEventListener("abort", onAbort)
      );
    });
  }

  wakeIfResults(): void {
    // A loop, not some(): this runs on every put while a reader waits.
    const leaves = this.#leaves;
    for (let i = 0; i < leaves.length; i++) {
      if (leaves[i]!.link?.hasData()) {
        for (const wake of this.#readers.splice(0)) wake();
        return;
      }
    }
  }

  /** Takes one result that is already here, or NONE. */
  #take(leaf: Leaf | null): unknown {
    if (this.#run.failure !== null) return NONE;
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
      if (leaf.ended || this.#run.terminated) return NONE;
      this.#pump!.pump();
      if (leaf.link === null) return NONE;
      const count = leaf.link.claim(leaf.queue, this.#seqs, ClaimPolicy.READER);
      if (count < 0) leaf.ended = true;
      if (count <= 0) return NONE;
      leaf.head = 0;
      leaf.end = count;
    }
    const value = leaf.queue[leaf.head];
    leaf.queue[leaf.head++] = undefined;
    return value;
  }

  /** Whether no result will ever come (from `leaf`, or from any leaf). */
  #ended(leaf: Leaf | null): boolean {
    if (this.#run.terminated) return true;
    const done = (l: Leaf) => l.ended && l.head === l.end;
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
  #finished = false;

  constructor(take: () => unknown, get: () => Promise<unknown>) {
    this.#take = take;
    this.#get = get;
  }

  next(): Promise<IteratorResult<unknown>> {
    if (this.#finished) {
      return Promise.resolve({ value: undefined, done: true });
    }
    const value = this.#take();
    if (value !== NONE) return Promise.resolve({ value, done: false });
    return this.#get().then(
      (next): IteratorResult<unknown> => {
        if (next !== null) return { value: next, done: false };
        this.#finished = true;
        return { value: undefined, done: true };
      },
      (error) => {
        this.#finished = true;
        throw error;
      },
    );
  }

  return(): Promise<IteratorResult<unknown>> {
    this.#finished = true;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<unknown> {
    return this;
  }
}
