/**
 * The pipeline's input: the main thread as the only producer of the root
 * stage's input link. `put` encodes a task and writes it to the ring at once
 * when there is room; otherwise the task waits, in order, until room appears.
 * Writes are published in runs, since each publish moves the ring's head to
 * the consumers' cores.
 *
 * The main thread never blocks: it waits for room with `Atomics.waitAsync`.
 *
 * @module
 */

import { Bell } from "./bell.ts";
import { Encoder } from "./codec.ts";
import { PipelineClosedError } from "./errors.ts";
import { InputLink } from "./link.ts";
import { checkCallOptions, type PutOptions } from "./options.ts";
import { Ring } from "./ring.ts";
import type { StopRequest } from "./run_state.ts";
import { type FailureReport, WatchedPromise } from "./failure_report.ts";

/** What the input needs of the output: to wake readers when results are there. */
export interface ResultWaker {
  /** Whether a reader sleeps waiting for results (read on every `put`). */
  readonly readersAsleep: boolean;
  /** Wakes the sleeping readers if a leaf ring holds results. */
  wakeIfResults(): void;
}

/** What the output needs of the input: to move waiting tasks on before it sleeps. */
export interface InputPump {
  /** Writes waiting tasks as far as there is room (nothing when none waits). */
  pump(): void;
  /** Publishes what was written. */
  publish(): void;
}

/** A task (or the stop request) waiting for room in the input ring. */
interface WaitingTask {
  /** The encoded task, or null for the stop request. */
  bytes: Uint8Array | null;
  /** How many of its bytes are already written (a fragmented record). */
  written: number;
  /** Whether it holds a place in the root stage's bounded backlog. */
  inBacklog: boolean;
  resolve(): void;
  reject(reason: unknown): void;
  /** The put's promise. */
  promise: WatchedPromise<void>;
}

/** What `put` returns for a task that entered at once: a caller may skip awaiting it. */
export const ENTERED: Promise<void> = Promise.resolve();
/** The main thread publishes at least every this many records. */
const PUBLISH_EVERY = 32;

/** The main thread's side of the root stage's input link. */
export class TaskInput implements InputPump {
  readonly #ring: Ring;
  /** The root link's control block: its doorbell and its backlog. */
  readonly #rootControl: Int32Array;
  readonly #maxBacklog: number;
  readonly #run: StopRequest;
  readonly #report: FailureReport;
  readonly #waker: ResultWaker;
  /** The stop request's put, once it was put: `close()` returns it again. */
  #stop: Promise<void> | null = null;
  readonly #encoder = new Encoder();
  #waiting: WaitingTask[] = [];
  #draining = false;
  /** Records written to the input ring and not yet published. */
  #unpublished = 0;
  #publishTimer: ReturnType<typeof setTimeout> | undefined;
  /** Tasks written to the input ring (the stop request not counted). */
  #entered = 0;
  /** Ms the first waiting task waited for room (a full ring or backlog). */
  #fullMs = 0;

  constructor(
    link: { control: SharedArrayBuffer; ring: SharedArrayBuffer },
    maxBacklog: number,
    run: StopRequest,
    report: FailureReport,
    waker: ResultWaker,
  ) {
    this.#ring = new Ring(link.ring);
    this.#rootControl = new Int32Array(link.control);
    this.#maxBacklog = maxBacklog;
    this.#run = run;
    this.#report = report;
    this.#waker = waker;
  }

  /** See `Pipeline.put`. */
  put(task: unknown, options: PutOptions | undefined): Promise<void> {
    try {
      checkCallOptions("put", options).signal?.throwIfAborted();
    } catch (error) {
      return Promise.reject(error);
    }
    const run = this.#run;
    if (run.failure !== null) {
      return WatchedPromise.rejected(
        run.failure,
        () => this.#report.observed(),
      );
    }
    if (run.stopRequested || run.terminated) {
      return Promise.reject(
        new PipelineClosedError(
          run.terminated
            ? "The pipeline was terminated: create a new Pipeline to put more tasks"
            : "The stop request was already put: put every task before null, or create a new Pipeline",
          task,
        ),
      );
    }
    let bytes: Uint8Array | null = null;
    if (task === null) {
      run.stopRequested = true;
      return this.#stop = this.#enqueue(null, 0, false, options);
    } else {
      const encoder = this.#encoder.idle();
      let length: number;
      try {
        length = encoder.encode(task);
      } catch (error) {
        return Promise.reject(error);
      }
      const encoded = encoder.bytes;
      if (this.#waiting.length === 0 && this.#enterBacklog()) {
        const written = this.#ring.write(Ring.DATA, 0, encoded, 0, length);
        if (written === length) {
          this.#entered++;
          this.#publishSoon();
          if (this.#waker.readersAsleep) this.#waker.wakeIfResults();
          return ENTERED;
        }
        this.#publishNow();
        return this.#enqueue(encoded.slice(0, length), written, true, options);
      }
      bytes = encoded.slice(0, length);
    }
    return this.#enqueue(bytes, 0, false, options);
  }

  /**
   * The stop request, as `close()` puts it: once it was put, the same promise
   * again, however often it is called.
   */
  close(): Promise<void> {
    const run = this.#run;
    if (this.#stop !== null && run.stopRequested && !run.terminated) {
      return run.failure === null
        ? this.#stop
        : WatchedPromise.rejected(run.failure, () => this.#report.observed());
    }
    return this.put(null, undefined);
  }

  /** Tasks that entered the pipeline: written to the root stage's input ring. */
  get entered(): number {
    return this.#entered;
  }

  /** Ms tasks waited for room at the root stage's input. */
  get fullMs(): number {
    return this.#fullMs;
  }

  /** Rejects every waiting task with `reason` and stops waiting for room (the pipeline ended). */
  shutDown(reason: unknown): void {
    clearTimeout(this.#publishTimer);
    const failed = reason === this.#run.failure;
    for (const waiting of this.#waiting.splice(0)) {
      // A put that code awaits sees the failure; one that nobody awaits may
      // be awaited later (see failure_report.ts).
      if (failed) {
        if (waiting.promise.watched) this.#report.observed();
        else waiting.promise.onWatched = () => this.#report.observed();
      }
      waiting.reject(reason);
    }
    // Wake the drain loop, which then sees the end.
    Bell.ringAlways(this.#ring.control, Ring.SPACE_BELL);
    Bell.ringAlways(this.#rootControl, InputLink.SPACE_BELL);
  }

  #enqueue(
    bytes: Uint8Array | null,
    written: number,
    inBacklog: boolean,
    options: PutOptions | undefined,
  ): Promise<void> {
    let settle!: Pick<WaitingTask, "resolve" | "reject">;
    const promise = WatchedPromise.create<void>((resolve, reject) =>
      settle = { resolve, reject }
    );
    const waiting: WaitingTask = {
      bytes,
      written,
      inBacklog,
      promise,
      ...settle,
    };
    const signal = options?.signal;
    if (signal !== undefined && written === 0) {
      const withdraw = () => {
        const at = this.#waiting.indexOf(waiting);
        // Only a task none of whose bytes were written can be withdrawn.
        if (at > 0 || (at === 0 && waiting.written === 0)) {
          this.#waiting.splice(at, 1);
          if (waiting.inBacklog) {
            // Give back the place it held; no worker will start it.
            Atomics.sub(this.#rootControl, InputLink.BACKLOG, 1);
          }
          if (waiting.bytes === null) this.#run.stopRequested = false;
          waiting.reject(signal.reason);
        }
      };
      signal.addEventListener("abort", withdraw, { once: true });
      // A signal may outlive many puts (feed's): each takes its listener off.
      const { resolve, reject } = settle;
      waiting.resolve = () => {
        signal.removeEventListener("abort", withdraw);
        resolve();
      };
      waiting.reject = (reason) => {
        signal.removeEventListener("abort", withdraw);
        reject(reason);
      };
    }
    this.#waiting.push(waiting);
    this.#drain();
    return promise;
  }

  /**
   * Writes waiting tasks as room appears, in order. The output pumps too
   * (see `ResultOutput`), because a `waitAsync` wake-up is a macrotask that
   * cannot run while results keep the microtask queue busy.
   */
  async #drain(): Promise<void> {
    if (this.#draining) return;
    this.#draining = true;
    try {
      while (this.#waiting.length > 0 && this.#run.failure === null) {
        // Arm both bells before the last try, so no release is missed.
        const backlog = Bell.arm(this.#rootControl, InputLink.SPACE_BELL);
        const room = Bell.arm(this.#ring.control, Ring.SPACE_BELL);
        if (this.#write()) continue;
        const first = this.#waiting[0];
        if (first === undefined) break;
        // Wait for the bell of what is missing: room in the ring, or a place
        // in the backlog; a bell rung since it was armed returns at once.
        const waitedFrom = performance.now();
        await (first.inBacklog
          ? Atomics.waitAsync(
            this.#ring.control,
            Ring.SPACE_BELL + Bell.COUNTER,
            room,
          )
          : Atomics.waitAsync(
            this.#rootControl,
            InputLink.SPACE_BELL + Bell.COUNTER,
            backlog,
          )).value;
        this.#fullMs += performance.now() - waitedFrom;
      }
    } finally {
      this.#draining = false;
    }
  }

  pump(): void {
    if (this.#waiting.length !== 0) this.#write();
  }

  publish(): void {
    if (this.#unpublished !== 0) this.#publishNow();
  }

  /** Writes as many waiting tasks as fit now; true if it made progress. */
  #write(): boolean {
    const ring = this.#ring;
    let progress = false;
    for (;;) {
      const waiting = this.#waiting[0];
      if (waiting === undefined) break;
      if (!waiting.inBacklog) {
        if (!this.#enterBacklog()) break;
        waiting.inBacklog = true;
      }
      const before = waiting.written;
      let complete: boolean;
      if (waiting.bytes === null) complete = ring.writeEmpty(Ring.STOP, 0);
      else {
        waiting.written = ring.write(
          Ring.DATA,
          0,
          waiting.bytes,
          waiting.written,
          waiting.bytes.length,
        );
        complete = waiting.written === waiting.bytes.length;
      }
      if (!complete) {
        progress ||= waiting.written !== before;
        break;
      }
      progress = true;
      if (waiting.bytes !== null) this.#entered++;
      this.#waiting.shift();
      waiting.resolve();
    }
    if (progress) this.#publishNow();
    return progress;
  }

  #publishNow(): void {
    this.#unpublished = 0;
    if (this.#ring.publish()) Bell.ring(this.#rootControl, InputLink.BELL);
  }

  /**
   * Publishes a run of puts at once: every PUBLISH_EVERY records, at once if
   * the root's workers sleep, and otherwise before the main thread waits or at
   * the next macrotask. Each publish moves the head's cache line to the
   * consumers, so one per record would cost the producer dearly.
   */
  #publishSoon(): void {
    // The flag is a hint, read plainly (an Atomics call is a builtin call in
    // V8): a stale read only delays this publish to the next run or the timer.
    if (
      ++this.#unpublished >= PUBLISH_EVERY ||
      this.#rootControl[InputLink.BELL + Bell.WAITING] !== 0
    ) {
      return this.#publishNow();
    }
    if (this.#publishTimer === undefined) {
      this.#publishTimer = setTimeout(() => {
        this.#publishTimer = undefined;
        if (this.#unpublished !== 0) this.#publishNow();
      }, 0);
    }
  }

  /** Takes a place in the root stage's backlog, if it is bounded and not full. */
  #enterBacklog(): boolean {
    if (this.#maxBacklog === Infinity) return true;
    const control = this.#rootControl;
    for (;;) {
      // A snapshot (workers lower it as tasks start): a place is taken only
      // by the compare-exchange.
      const backlog = Atomics.load(control, InputLink.BACKLOG);
      if (backlog >= this.#maxBacklog) return false;
      if (
        Atomics.compareExchange(
          control,
          InputLink.BACKLOG,
          backlog,
          backlog + 1,
        ) === backlog
      ) return true;
    }
  }
}
