/**
 * The pipeline as Web Streams, and `feed`: a `WritableStream` of tasks, a
 * `ReadableStream` of results (`ResultStream`, in `result_stream.ts`), and a
 * loop that puts every item of an iterable or stream. All three sit on the
 * same input and output as `put` and `get`, so backpressure reaches the rings
 * in both directions: a write waits while the chunks held with it wait for
 * room, and results wait in the rings until a reader asks for them.
 *
 * @module
 */

import { ENTERED, type TaskInput } from "../main_thread/task_input.ts";
import type { ResultOutput } from "../main_thread/result_output.ts";
import { ResultStream } from "./result_stream.ts";
import {
  checkBoolean,
  checkObject,
  checkOptionNames,
  checkSignal,
  describe,
} from "../checks.ts";

/**
 * Options of `feed`.
 *
 * @example Usage
 * ```ts
 * import { type FeedOptions, OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline(new OrderedStage((x: number) => x * 2));
 * const options: FeedOptions = { close: false }; // more to come
 * await pipe.feed([1, 2], options);
 * await pipe.feed([3]);
 * assert.deepEqual(await Array.fromAsync(pipe), [2, 4, 6]);
 * ```
 */
export interface FeedOptions {
  /**
   * Put the stop request after the last item.
   * @default {true}
   */
  close?: boolean;
  /** Stop feeding (and close the source) when this signal aborts; the tasks already put stay. */
  signal?: AbortSignal;
}

/** What the streams and `feed` need of the pipeline besides its input and output. */
export interface StreamOwner {
  /** Cuts the run short (the readable's cancel). */
  terminate(): void;
  /** Cuts the run short, its readers rejecting with `reason` (the input failed). */
  abort(reason: unknown): void;
  /** Aborts when the run is cut short, with the reason a feed rejects with then. */
  readonly cutShort: AbortSignal;
}

/** Results a readable stream holds ahead of its reader, at most: a claim's worth. */
const READ_AHEAD = 256;
/** The writable holds at most this many chunks before it puts them. */
const HELD_CHUNKS = 256;
/** A feed yields to other microtasks (the readers) at least this often. */
const FEED_YIELD_EVERY = 256;

/** The pipeline's two streams, made on first use. */
export class PipelineStreams<I, O> {
  readonly #input: TaskInput;
  readonly #output: ResultOutput;
  readonly #owner: StreamOwner;
  #writable: WritableStream<I> | null = null;
  #readable: ReadableStream<O> | null = null;
  /** How to error each stream when the pipeline fails. */
  #errorWritable: ((error: unknown) => void) | null = null;
  #errorReadable: ((error: unknown) => void) | null = null;
  /** Why the writable's abort or the readable's cancel cut the run short. */
  #cutShortBy: { reason: unknown } | null = null;

  constructor(input: TaskInput, output: ResultOutput, owner: StreamOwner) {
    this.#input = input;
    this.#output = output;
    this.#owner = owner;
  }

  /**
   * See `Pipeline.writable`. Its chunks are held and put together: a chunk
   * that entered at once would wake a sleeping worker for itself alone (a
   * stream hands over one chunk per few microtasks, slower than a worker
   * takes them), so the sink holds up to HELD_CHUNKS chunks and puts them
   * together, when that many are held or at the next macrotask. A write
   * whose chunks wait for room waits with them: that is the backpressure.
   */
  get writable(): WritableStream<I> {
    if (this.#writable !== null) return this.#writable;
    const input = this.#input;
    const owner = this.#owner;
    let controller!: WritableStreamDefaultController;
    const held: I[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    /** A put of a held chunk failed: the stream errors, and an item that cannot be put cuts the run short. */
    const putFailed = (error: unknown) => {
      controller.error(error);
      if (!owner.cutShort.aborted) owner.abort(error);
    };
    /** Puts the held chunks; returns the wait for room of the last, if any. */
    const putHeld = (): Promise<void> | undefined => {
      clearTimeout(timer);
      timer = undefined;
      let last = ENTERED;
      for (let i = 0; i < held.length; i++) {
        last = input.put(held[i], undefined);
        // Puts enter in call order; only those that wait (or fail) cost a
        // handler, which does not count as observing a failure (the stream
        // reports it).
        if (last !== ENTERED) {
          Promise.prototype.then.call(last, null, putFailed);
        }
      }
      held.length = 0;
      return last === ENTERED ? undefined : last;
    };
    return this.#writable = new WritableStream<I>({
      start: (c) => {
        controller = c;
        this.#errorWritable = (error) => c.error(error);
        if (this.#cutShortBy !== null) c.error(this.#cutShortBy.reason);
      },
      write: (task) => {
        held.push(task);
        if (held.length < HELD_CHUNKS) timer ??= setTimeout(putHeld, 0);
        else return putHeld();
      },
      close: async () => {
        try {
          await putHeld();
          await input.close();
        } catch (error) {
          // Why the run was cut short (a put of the last chunks failed, say).
          throw owner.cutShort.aborted ? owner.cutShort.reason : error;
        }
      },
      abort: (reason) => {
        clearTimeout(timer);
        held.length = 0; // chunks not yet put, dropped as an abort drops queued chunks
        this.#cutShort(reason, this.#errorReadable);
      },
    }, new CountQueuingStrategy({ highWaterMark: 1 }));
  }

  /** See `Pipeline.readable`. */
  get readable(): ReadableStream<O> {
    if (this.#readable !== null) return this.#readable;
    const output = this.#output;
    let controller!: ReadableStreamDefaultController<O>;
    const stream: ResultStream<O> = new ResultStream<O>({
      start: (c) => {
        controller = c;
        this.#errorReadable = (error) => {
          stream.failure ??= { error };
          c.error(error);
        };
      },
      // Called only while the queue has room: what is not asked for stays in
      // the rings, and the workers wait.
      pull: (c): Promise<void> =>
        stream.gatedPull(async () => {
          const room = Math.max(1, c.desiredSize ?? 1);
          const enqueue = (result: unknown) => c.enqueue(result as O);
          if (output.takeInto(enqueue, room) > 0) return;
          const next = await output.get(null, undefined);
          if (stream.closed || stream.failure !== null) return;
          if (next === null) stream.close(c);
          else enqueue(next);
        }),
      cancel: (reason) => {
        stream.closed = true;
        this.#cutShort(reason, this.#errorWritable);
      },
    }, new CountQueuingStrategy({ highWaterMark: READ_AHEAD }));
    stream.fast = {
      results: () => output.results(null, undefined) as AsyncIterator<O>,
      queued: () => READ_AHEAD - (controller.desiredSize ?? READ_AHEAD),
      close: () => stream.close(controller),
    };
    // Made after the writable's abort cut the run short: it errors too.
    if (this.#cutShortBy !== null) {
      this.#errorReadable!(this.#cutShortBy.reason);
    }
    return this.#readable = stream;
  }

  /**
   * One stream's abort or cancel cuts the run short, and errors the other
   * stream with its reason, as a `TransformStream` does: a `pipeTo` after
   * `pipeThrough(pipe, { signal })` aborts its destination, not closes it.
   * The writable's abort is the input failing: every reader gets the reason.
   */
  #cutShort(
    reason: unknown,
    errorOther: ((error: unknown) => void) | null,
  ): void {
    this.#cutShortBy ??= { reason };
    errorOther?.(reason);
    if (errorOther === this.#errorReadable) this.#owner.abort(reason);
    else this.#owner.terminate();
  }

  /** See `Pipeline.feed`. */
  feed(
    source: Iterable<I> | AsyncIterable<I> | ReadableStream<I>,
    options: FeedOptions = {},
  ): Promise<void> {
    return feed(this.#input, this.#owner, source, options);
  }

  /** The pipeline failed: error the streams that exist. */
  failed(error: unknown): void {
    this.#errorWritable?.(error);
    this.#errorReadable?.(error);
  }
}

/**
 * Puts every item of `source` (see `Pipeline.feed`). Its signal, and the
 * run being cut short, are raced against each pending step of the source. A
 * source that throws, or an item that cannot be put, cuts the run short with
 * that error (as `pipeTo` aborts its destination); a feed stopped by its
 * signal leaves the pipeline open.
 */
async function feed<I>(
  input: TaskInput,
  owner: StreamOwner,
  source: Iterable<I> | AsyncIterable<I> | ReadableStream<I>,
  options: FeedOptions,
): Promise<void> {
  const { close = true, signal } = checkFeedOptions(options);
  const putOptions = signal === undefined ? undefined : { signal };
  const iterator = iteratorOf(source);
  const cutShort = owner.cutShort;
  /** The source needs no closing: it ended, or was closed. */
  let sourceClosed = false;
  /** A step of the source is still pending: its iterator cannot close before it settles. */
  let stepPending = false;
  const closeSource = async () => {
    if (sourceClosed) return;
    sourceClosed = true;
    await iterator.return?.();
  };
  // What stops the feed before its source ends: one listener each for the
  // whole feed (not one per step), which rejects the pending step's wait.
  // (Racing each step against one long-lived promise would leave a reaction
  // on it per step: memory that grows with the source.)
  let interrupt: ((reason: unknown) => void) | null = null;
  const onAbort = () => interrupt?.(signal!.reason);
  const onCutShort = () => interrupt?.(cutShort.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  cutShort.addEventListener("abort", onCutShort, { once: true });
  const stopListening = () => {
    signal?.removeEventListener("abort", onAbort);
    cutShort.removeEventListener("abort", onCutShort);
  };
  const untilSettledOrStopped = (step: Promise<IteratorResult<I>>) =>
    new Promise<IteratorResult<I>>((resolve, reject) => {
      interrupt = reject;
      step.then(resolve, reject);
    });
  try {
    signal?.throwIfAborted();
    cutShort.throwIfAborted();
    let count = 0;
    for (;;) {
      const step = iterator.next();
      let result: IteratorResult<I>;
      if (!isPromise(step)) result = step;
      else {
        stepPending = true;
        // Checked before each wait: an abort between steps has no wait to stop.
        signal?.throwIfAborted();
        cutShort.throwIfAborted();
        result = await untilSettledOrStopped(step);
        interrupt = null;
        stepPending = false;
      }
      if (result.done) break;
      signal?.throwIfAborted();
      const entered = input.put(result.value, putOptions);
      // Skip the await (a microtask) for a task that entered at once, but
      // let the readers run now and then.
      if (entered !== ENTERED) await quietly(entered);
      else if (++count % FEED_YIELD_EVERY === 0) await null;
      signal?.throwIfAborted();
    }
    sourceClosed = true;
    if (close) await quietly(input.close());
  } catch (error) {
    // The source failed, or an item could not be put: the pipeline ends, so
    // that its readers learn why rather than wait for ever. (After its own
    // end, or the feed's signal, there is nothing to end.)
    if (!cutShort.aborted && !signal?.aborted) owner.abort(error);
    // An async generator closes only after its pending step: don't wait.
    const closing = closeSource().catch(() => {});
    if (!stepPending) await closing;
    throw error;
  } finally {
    stopListening();
  }
}

/** An iterator over any of feed's sources, sync or async. */
function iteratorOf<I>(
  source: Iterable<I> | AsyncIterable<I> | ReadableStream<I>,
): Iterator<I> | AsyncIterator<I> {
  // Another pipeline's results: its own iterator reads them directly.
  if (source instanceof ResultStream) return source.feedIterator();
  if (source instanceof ReadableStream) return streamIterator(source);
  const value = source as Partial<Iterable<I> & AsyncIterable<I>>;
  if (typeof value?.[Symbol.asyncIterator] === "function") {
    return value[Symbol.asyncIterator]!();
  }
  if (typeof value?.[Symbol.iterator] === "function") {
    return value[Symbol.iterator]!();
  }
  throw new TypeError(
    `feed: 'source' must be an Iterable, an AsyncIterable or a ReadableStream, got ${
      describe(source)
    }`,
  );
}

/**
 * A stream's chunks; unlike its own iterator's, `return()` cancels it at
 * once, even while a read is pending (a source that is slow to yield).
 */
function streamIterator<I>(stream: ReadableStream<I>): AsyncIterator<I> {
  const reader = stream.getReader();
  return {
    next: () =>
      reader.read().then((read) => {
        if (read.done) reader.releaseLock();
        return read as IteratorResult<I>;
      }),
    return: async () => {
      await reader.cancel();
      reader.releaseLock();
      return { value: undefined, done: true };
    },
  };
}

/**
 * Waits for one of the pipeline's own promises without counting as code that
 * observes its failure: feed's caller observes it, through feed's promise.
 */
function quietly(promise: Promise<void>): Promise<void> {
  return new Promise((resolve, reject) =>
    Promise.prototype.then.call(promise, resolve, reject)
  );
}

function isPromise<T>(value: T | Promise<T>): value is Promise<T> {
  return typeof (value as { then?: unknown })?.then === "function";
}

function checkFeedOptions(options: unknown): FeedOptions {
  const o = checkObject("feed", "options", options);
  checkOptionNames("feed", o, ["close", "signal"]);
  checkBoolean("feed", "options.close", o.close);
  checkSignal("feed", "options.signal", o.signal);
  return o as FeedOptions;
}
