/**
 * The pipeline's input: the main thread as the only producer of the root
 * stage's input link. `put` encodes a task and writes it to the ring at once
 * when there is room; otherwise the task waits, in order, until room appears.
 * Writes are published several at a time, since each publish moves the
 * ring's head to the consumers' cores.
 *
 * The main thread never blocks: it waits for room with `Atomics.waitAsync`.
 *
 * @module
 */

import type { Arena } from "../shared_memory/arena.ts";
import { Bell } from "../shared_memory/bell.ts";
import { Encoder } from "../shared_memory/codec.ts";
import { Fifo } from "./fifo.ts";
import { PipelineClosedError } from "../errors.ts";
import { LinkReader } from "../shared_memory/link_reader.ts";
import { checkCallOptions, type PutOptions } from "./options.ts";
import { Ring } from "../shared_memory/ring.ts";
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

/**
 * Puts that wait for room together, in order, with one settlement: their
 * tasks' bytes back to back in one buffer, and one promise that settles once
 * the last of them has entered. A waiting small task so costs its bytes and
 * its end offset, not a promise and closures of its own. A put with a
 * `signal`, a large task and the stop request wait in a bundle of their own.
 */
class WaitingBundle {
  /** The encoded tasks back to back; null for the stop request. */
  bytes: Uint8Array | null;
  /** Where each task's bytes end in `bytes`. */
  readonly ends: number[] = [];
  /** The first task that has not entered. */
  next = 0;
  /** How far that task's bytes are written (a task written in fragments). */
  written = 0;
  /** Whether that task holds a place in the root stage's bounded backlog. */
  inBacklog = false;
  /** Whether more puts may join. */
  joinable: boolean;
  /** Whether its put was withdrawn by its signal (it stays queued, skipped). */
  withdrawn = false;
  /** The arena allocations its task carries, one reference each, dropped if it is withdrawn. */
  refs: number[] | null = null;
  readonly promise: WatchedPromise<void>;
  resolve!: () => void;
  reject!: (reason: unknown) => void;

  constructor(bytes: Uint8Array | null, joinable: boolean) {
    this.bytes = bytes;
    this.joinable = joinable;
    this.promise = WatchedPromise.create<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
    // Code that awaits the bundle waits for its puts so far, not for later ones.
    this.promise.onWatched = () => this.joinable = false;
  }

  /** Where the next task's bytes start. */
  get start(): number {
    return this.next === 0 ? 0 : this.ends[this.next - 1]!;
  }

  /** Bytes used. */
  get size(): number {
    return this.ends.length === 0 ? 0 : this.ends[this.ends.length - 1]!;
  }

  /** Appends `src[0, length)` as one more task, growing the buffer as needed. */
  append(src: Uint8Array, length: number): void {
    const at = this.size;
    let bytes = this.bytes!;
    if (at + length > bytes.length) {
      const grown = new Uint8Array(Math.max(bytes.length * 2, at + length));
      grown.set(bytes.subarray(0, at));
      this.bytes = bytes = grown;
    }
    if (length <= 32) {
      // A loop beats set()+subarray() for small tasks, and allocates nothing.
      for (let i = 0; i < length; i++) bytes[at + i] = src[i]!;
    } else bytes.set(src.subarray(0, length), at);
    this.ends.push(at + length);
  }
}

/** Tasks at most this large wait packed in a shared bundle; larger ones wait alone, uncopied. */
const PACKED_MAX = 16 * 1024;
/** A bundle takes at most this many tasks, so its first put does not wait long for the last. */
const BUNDLE_TASKS = 4096;
/** A bundle's buffer starts with this many bytes and doubles as tasks join. */
const BUNDLE_FIRST_BYTES = 256;
/** A bundle takes no more tasks once its buffer holds this many bytes. */
const BUNDLE_BYTES = 256 * 1024;

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
  /** Bundles of puts that wait for room, in order. */
  readonly #waiting = new Fifo<WaitingBundle>();
  /** The waiting puts of each signal, and the one abort listener that withdraws them. */
  readonly #bySignal = new Map<
    AbortSignal,
    { bundles: Set<WaitingBundle>; withdrawAll: () => void }
  >();
  /** Whether `#pumpAsRoomAppears` runs (one loop at a time). */
  #pumping = false;
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
    arena: Arena | null,
  ) {
    this.#encoder.arena = arena;
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
    const refusal = this.#refusal(task);
    if (refusal !== null) return refusal;
    if (task === null) {
      const run = this.#run;
      run.stopRequested = true;
      const stop = this.#alone(null, 0, options);
      this.#pumpAsRoomAppears();
      return this.#stop = stop.promise;
    } else {
      const encoder = this.#encoder.idle();
      encoder.transfer = options?.transfer === true;
      let length: number;
      try {
        length = encoder.encode(task);
      } catch (error) {
        return Promise.reject(error);
      }
      // A getter of the task may have put the stop request, or cut the run
      // short: the task must not enter after that.
      const refusedWhileCopied = this.#refusal(task);
      if (refusedWhileCopied !== null) return refusedWhileCopied;
      const encoded = encoder.bytes;
      if (this.#waiting.length === 0 && this.#enterBacklog()) {
        const written = this.#ring.write(Ring.DATA, 0, encoded, 0, length);
        if (written === length) {
          this.#entered++;
          this.#publishSoon();
          if (this.#waker.readersAsleep) this.#waker.wakeIfResults();
          // A large record's buffer is not kept until the next put.
          if (length > Encoder.KEEP_BYTES) encoder.trim();
          return ENTERED;
        }
        this.#publishNow();
        const bundle = this.#alone(encoder.takeBytes(), length, options);
        bundle.written = written;
        bundle.inBacklog = true;
        this.#pumpAsRoomAppears();
        return bundle.promise;
      }
      return this.#enqueue(encoder, length, options);
    }
  }

  /** The rejection of a put of `task` once the pipeline takes no more tasks, or null. */
  #refusal(task: unknown): Promise<void> | null {
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
            : "The stop request was already put (by put(null), close(), or a feed that ended): put every task before it (feeds that share a pipeline take { close: false }, then put(null) once all are done), or create a new Pipeline",
          task,
        ),
      );
    }
    return null;
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

  /** The run was cut short: rejects every waiting put with `reason` and stops waiting for room. */
  cutShort(reason: unknown): void {
    clearTimeout(this.#publishTimer);
    const failed = reason === this.#run.failure;
    // One rejection per bundle, not per put: O(bundles).
    for (const waiting of this.#waiting.clear()) {
      if (waiting.withdrawn) continue;
      // A put that code awaits sees the failure; one that nobody awaits may
      // be awaited later (see failure_report.ts).
      if (failed) {
        if (waiting.promise.watched) this.#report.observed();
        else waiting.promise.onWatched = () => this.#report.observed();
      }
      waiting.reject(reason);
    }
    // Wake the pump loop, which then sees the end.
    Bell.ringAlways(this.#ring.control, Ring.SPACE_BELL);
    Bell.ringAlways(this.#rootControl, LinkReader.SPACE_BELL);
  }

  /**
   * Queues the task `encoder` just encoded (`length` bytes), in the last bundle
   * at the end if it may join.
   */
  #enqueue(
    encoder: Encoder,
    length: number,
    options: PutOptions | undefined,
  ): Promise<void> {
    let bundle = this.#waiting.last;
    if (
      length > PACKED_MAX || length > this.#ring.maxPayload ||
      options?.signal !== undefined
    ) {
      bundle = this.#alone(encoder.takeBytes(), length, options);
      // The references of a put its signal may withdraw.
      if (encoder.arenaStarts.length) bundle.refs = encoder.arenaStarts.slice();
    } else {
      const encoded = encoder.bytes;
      if (
        bundle === undefined || !bundle.joinable ||
        bundle.ends.length === BUNDLE_TASKS ||
        bundle.size + length > BUNDLE_BYTES
      ) {
        if (bundle !== undefined) bundle.joinable = false;
        bundle = new WaitingBundle(
          new Uint8Array(Math.max(BUNDLE_FIRST_BYTES, length)),
          true,
        );
        this.#waiting.push(bundle);
      }
      bundle.append(encoded, length);
    }
    this.#pumpAsRoomAppears();
    return bundle.promise;
  }

  /**
   * Queues a bundle of one: a large task (`bytes[0, length)`, not copied again),
   * the stop request (null), or a put with a signal, which its abort may
   * withdraw.
   */
  #alone(
    bytes: Uint8Array | null,
    length: number,
    options: PutOptions | undefined,
  ): WaitingBundle {
    const last = this.#waiting.last;
    if (last !== undefined) last.joinable = false;
    const bundle = new WaitingBundle(bytes, false);
    if (bytes !== null) bundle.ends.push(length);
    this.#waiting.push(bundle);
    const signal = options?.signal;
    if (signal !== undefined) {
      // One listener per signal, not per put: an EventTarget scans its
      // listeners on every add and remove, so many puts waiting on one
      // signal would cost O(n^2).
      const listened = this.#bySignal.get(signal) ?? this.#listen(signal);
      const { bundles } = listened;
      bundles.add(bundle);
      // A signal may outlive many puts (feed's): each settled put leaves its
      // set, and the last takes the listener off.
      const forget = () => {
        if (!bundles.delete(bundle) || bundles.size !== 0) return;
        if (this.#bySignal.get(signal)?.bundles === bundles) {
          this.#bySignal.delete(signal);
          signal.removeEventListener("abort", listened.withdrawAll);
        }
      };
      const { resolve, reject } = bundle;
      bundle.resolve = () => {
        forget();
        resolve();
      };
      bundle.reject = (reason) => {
        forget();
        reject(reason);
      };
    }
    return bundle;
  }

  /** Listens for `signal`'s abort, which withdraws its waiting puts. */
  #listen(
    signal: AbortSignal,
  ): { bundles: Set<WaitingBundle>; withdrawAll: () => void } {
    const bundles = new Set<WaitingBundle>();
    const withdrawAll = () => {
      this.#bySignal.delete(signal);
      for (const bundle of bundles) this.#withdraw(bundle, signal.reason);
    };
    const listened = { bundles, withdrawAll };
    this.#bySignal.set(signal, listened);
    signal.addEventListener("abort", withdrawAll, { once: true });
    return listened;
  }

  /** Withdraws `bundle`, whose signal aborted with `reason`, unless some of its bytes were written. */
  #withdraw(bundle: WaitingBundle, reason: unknown): void {
    if (bundle.written !== 0) return;
    bundle.withdrawn = true;
    if (bundle.inBacklog) {
      // Give back the place it held; no worker will start it.
      Atomics.sub(this.#rootControl, LinkReader.BACKLOG, 1);
    }
    if (bundle.bytes === null) this.#run.stopRequested = false;
    // Its buffers go back: no ring holds the record.
    for (const start of bundle.refs ?? []) this.#encoder.arena!.drop(start);
    bundle.reject(reason);
  }

  /**
   * Writes waiting tasks as room appears, in order. The output pumps too
   * (see `ResultOutput`), because a `waitAsync` wake-up is a macrotask that
   * cannot run while results keep the microtask queue busy.
   */
  async #pumpAsRoomAppears(): Promise<void> {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (this.#waiting.length > 0 && this.#run.failure === null) {
        // Arm both bells before the last try, so no release is missed.
        const backlog = Bell.arm(this.#rootControl, LinkReader.SPACE_BELL);
        const room = Bell.arm(this.#ring.control, Ring.SPACE_BELL);
        if (this.#write()) continue;
        const first = this.#waiting.first;
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
            LinkReader.SPACE_BELL + Bell.COUNTER,
            backlog,
          )).value;
        this.#fullMs += performance.now() - waitedFrom;
      }
    } finally {
      this.#pumping = false;
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
    const waiting = this.#waiting;
    let progress = false;
    for (;;) {
      const bundle = waiting.first;
      if (bundle === undefined) break;
      if (bundle.withdrawn) {
        waiting.shift();
        continue;
      }
      if (!bundle.inBacklog) {
        if (!this.#enterBacklog()) break;
        bundle.inBacklog = true;
      }
      const bytes = bundle.bytes;
      let complete: boolean;
      if (bytes === null) complete = ring.writeEmpty(Ring.STOP, 0);
      else {
        const start = bundle.start;
        const end = bundle.ends[bundle.next]!;
        if (end - start <= ring.maxPayload) {
          complete = ring.writeRecord(Ring.DATA, 0, bytes, start, end);
        } else {
          // A large task waits alone (start 0) and goes in fragments.
          const before = bundle.written;
          bundle.written = ring.write(Ring.DATA, 0, bytes, before, end);
          complete = bundle.written === end;
          progress ||= bundle.written !== before;
        }
      }
      if (!complete) break;
      progress = true;
      bundle.inBacklog = false;
      bundle.written = 0;
      if (bytes === null || ++bundle.next === bundle.ends.length) {
        // Every task of the bundle entered: settle its puts. A bundle still
        // joinable could take more tasks: no more may join now.
        bundle.joinable = false;
        waiting.shift();
        // A large task's buffer is freed now, not at the next major GC.
        if (bytes !== null && bytes.length > Encoder.KEEP_BYTES) {
          Encoder.free(bytes.buffer as ArrayBuffer);
        }
        bundle.resolve();
      }
      if (bytes !== null) this.#entered++;
    }
    if (progress) this.#publishNow();
    return progress;
  }

  #publishNow(): void {
    this.#unpublished = 0;
    if (this.#ring.publish()) Bell.ring(this.#rootControl, LinkReader.BELL);
  }

  /**
   * Publishes several writes at once: every PUBLISH_EVERY records, at once if
   * the root's workers sleep, and otherwise before the main thread waits or at
   * the next macrotask. Each publish moves the head's cache line to the
   * consumers, so one per record would cost the producer dearly.
   */
  #publishSoon(): void {
    // The flag is a hint, read plainly (an Atomics call is a builtin call in
    // V8): a stale read only delays this publish to the next put or the timer.
    if (
      ++this.#unpublished >= PUBLISH_EVERY ||
      this.#rootControl[LinkReader.BELL + Bell.WAITING] !== 0
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
      const backlog = Atomics.load(control, LinkReader.BACKLOG);
      if (backlog >= this.#maxBacklog) return false;
      if (
        Atomics.compareExchange(
          control,
          LinkReader.BACKLOG,
          backlog,
          backlog + 1,
        ) === backlog
      ) return true;
    }
  }
}
