/**
 * The pipeline as Web Streams, and `feed`: a `WritableStream` of tasks, a
 * `ReadableStream` of results, and a loop that puts every item of an
 * iterable or stream. All three sit on the same input and output as `put`
 * and `get`, so backpressure reaches the rings in both directions: a write
 * waits while its batch of tasks waits for room, and results wait in the
 * rings until a reader asks for them.
 *
 * @module
 */

import { ENTERED, type TaskInput } from "../main_thread/task_input.ts";
import type { ResultOutput } from "../main_thread/result_output.ts";
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
  /** Ends the pipeline at once (the readable's cancel). */
  terminate(): void;
  /** Ends the pipeline at once, its readers rejecting with `reason` (the input failed). */
  abort(reason: unknown): void;
  /** Aborts when the pipeline ends early, with the reason a feed rejects with then. */
  readonly ended: AbortSignal;
}

/** Results a readable stream holds ahead of its reader, at most: a claim's worth. */
const READ_AHEAD = 256;
/** The writable puts chunks in batches of at most this many. */
const WRITE_BATCH = 256;
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
  /** Why the writable's abort or the readable's cancel ended the pipeline. */
  #endedBy: { reason: unknown } | null = null;

  constructor(input: TaskInput, output: ResultOutput, owner: StreamOwner) {
    this.#input = input;
    this.#output = output;
    this.#owner = owner;
  }

  /**
   * See `Pipeline.writable`. Its chunks are put in batches: a chunk that
   * entered at once would wake a sleeping worker for itself alone (a stream
   * hands over one chunk per few microtasks, slower than a worker takes
   * them), so the sink collects up to WRITE_BATCH chunks and puts them
   * together, when the batch is full or at the next macrotask. A write whose
   * batch waits for room waits with it: that is the backpressure.
   */
  get writable(): WritableStream<I> {
    if (this.#writable !== null) return this.#writable;
    const input = this.#input;
    const owner = this.#owner;
    let controller!: WritableStreamDefaultController;
    const batch: I[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    /** A put of the batch failed: the stream errors, and an item that cannot be put ends the pipeline. */
    const putFailed = (error: unknown) => {
      controller.error(error);
      if (!owner.ended.aborted) owner.abort(error);
    };
    /** Puts the batch; returns the wait for room of its last task, if any. */
    const flush = (): Promise<void> | undefined => {
      clearTimeout(timer);
      timer = undefined;
      let last = ENTERED;
      for (let i = 0; i < batch.length; i++) {
        last = input.put(batch[i], undefined);
        // Puts enter in call order; only those that wait (or fail) cost a
        // handler, which does not count as observing a failure (the stream
        // reports it).
        if (last !== ENTERED) {
          Promise.prototype.then.call(last, null, putFailed);
        }
      }
      batch.length = 0;
      return last === ENTERED ? undefined : last;
    };
    return this.#writable = new WritableStream<I>({
      start: (c) => {
        controller = c;
        this.#errorWritable = (error) => c.error(error);
        if (this.#endedBy !== null) c.error(this.#endedBy.reason);
      },
      write: (task) => {
        batch.push(task);
        if (batch.length < WRITE_BATCH) timer ??= setTimeout(flush, 0);
        else return flush();
      },
      close: async () => {
        try {
          await flush();
          await input.close();
        } catch (error) {
          // Why the pipeline ended (a put of the last batch failed, say).
          throw owner.ended.aborted ? owner.ended.reason : error;
        }
      },
      abort: (reason) => {
        clearTimeout(timer);
        batch.length = 0; // chunks not yet put, dropped as an abort drops queued chunks
        this.#end(reason, this.#errorReadable);
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
        this.#end(reason, this.#errorWritable);
      },
    }, new CountQueuingStrategy({ highWaterMark: READ_AHEAD }));
    stream.fast = {
      results: () => output.results(null, undefined) as AsyncIterator<O>,
      queued: () => READ_AHEAD - (controller.desiredSize ?? READ_AHEAD),
      close: () => stream.close(controller),
    };
    // Made after the writable's abort ended the pipeline: it errors too.
    if (this.#endedBy !== null) this.#errorReadable!(this.#endedBy.reason);
    return this.#readable = stream;
  }

  /**
   * One stream's abort or cancel ends the pipeline, and errors the other
   * stream with its reason, as a `TransformStream` does: a `pipeTo` after
   * `pipeThrough(pipe, { signal })` aborts its destination, not closes it.
   * The writable's abort is the input failing: every reader gets the reason.
   */
  #end(reason: unknown, errorOther: ((error: unknown) => void) | null): void {
    this.#endedBy ??= { reason };
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

/** What async generators inherit: `[Symbol.asyncIterator]`, and `[Symbol.asyncDispose]` where Deno has it. */
const ASYNC_ITERATOR_PROTOTYPE: object = Object.getPrototypeOf(
  Object.getPrototypeOf(async function* () {}).prototype,
);

/**
 * The pipeline's readable stream. `for await` over it (`values()`) reads
 * the pipeline's results directly, as `results()` does, while it holds the
 * stream's lock, since a stream read per result costs several times a
 * result's own way through the pipeline; the results the stream had read
 * ahead come first. Every other reader (`getReader()`, `pipeTo`) reads the
 * stream as any other.
 */
class ResultStream<O> extends ReadableStream<O> {
  /** How to read the results directly; set by `PipelineStreams`. */
  fast: {
    results(): AsyncIterator<O>;
    /** Results the stream holds in its queue. */
    queued(): number;
    close(): void;
  } | null = null;
  /** It was closed (the end was read) or cancelled. */
  closed = false;
  /** What it errored with (the pipeline's failure, or the writable's abort). */
  failure: { error: unknown } | null = null;
  /** Settles when a direct read ends: pulls wait for it, so that the order holds. */
  #directRead: Promise<void> | null = null;
  /** A pull that is reading the pipeline: a direct read starts after it. */
  #pulling: Promise<void> | null = null;

  /** Runs a pull's `read` once no direct read runs. */
  async gatedPull(read: () => Promise<void>): Promise<void> {
    while (this.#directRead !== null) await this.#directRead;
    if (this.closed) return;
    const pulling = this.#pulling = read();
    try {
      await pulling;
    } finally {
      if (this.#pulling === pulling) this.#pulling = null;
    }
  }

  /** Closes the stream once (the end was read). */
  close(controller: ReadableStreamDefaultController<O>): void {
    if (this.closed || this.failure !== null) return;
    this.closed = true;
    controller.close();
  }

  override values(
    options?: ReadableStreamIteratorOptions,
  ): AsyncIterableIterator<O> {
    return this.#iterate(options, false);
  }

  /**
   * The iterator `feed` reads it with: as `values()`, but `return()` cancels
   * at once, even while a `next()` waits for a result (a quiet pipeline).
   */
  feedIterator(): AsyncIterableIterator<O> {
    return this.#iterate(undefined, true);
  }

  #iterate(
    options: ReadableStreamIteratorOptions | undefined,
    returnAtOnce: boolean,
  ): AsyncIterableIterator<O> {
    const fast = this.fast;
    if (fast === null || this.locked) return super.values(options);
    const reader = this.getReader();
    let direct: AsyncIterator<O> | null = null;
    let done!: () => void;
    let ended = false;
    this.#directRead = new Promise((resolve) => done = resolve);
    const end = () => {
      if (ended) return;
      ended = true;
      this.#directRead = null;
      done();
      reader.releaseLock();
    };
    const nextStep = async (): Promise<IteratorResult<O>> => {
      try {
        if (ended) return { value: undefined, done: true };
        // A pull that began before this read may still add to the queue.
        if (direct === null) await this.#pulling?.catch(() => {});
        // The results the stream read ahead come first, through the lock.
        if (direct === null && fast.queued() > 0) {
          const read = await reader.read();
          if (read.done) end();
          return read.done ? { value: undefined, done: true } : read;
        }
        direct ??= fast.results();
        const next = await direct.next();
        if (next.done) {
          end();
          // The results ended because the writable's abort ended the pipeline.
          if (this.failure !== null) throw this.failure.error;
          fast.close();
        }
        return next;
      } catch (error) {
        end();
        throw error;
      } finally {
        if (++settled === calls) ongoing = null;
      }
    };
    // After the end, an error or an earlier return, there is nothing to
    // cancel (as with the stream's own iterator).
    const returnStep = async (value?: unknown): Promise<IteratorResult<O>> => {
      try {
        if (ended) return { value: undefined, done: true };
        end();
        if (!options?.preventCancel) await this.cancel(value);
        return { value: undefined, done: true };
      } finally {
        if (++settled === calls) ongoing = null;
      }
    };
    // Calls run one after another, as with the stream's own iterator.
    let ongoing: Promise<IteratorResult<O>> | null = null;
    let calls = 0;
    let settled = 0;
    const iterator = Object.create(ASYNC_ITERATOR_PROTOTYPE);
    iterator.next = () => {
      calls++;
      return ongoing = ongoing === null
        ? nextStep()
        : ongoing.then(nextStep, nextStep);
    };
    iterator.return = (value?: unknown) => {
      calls++;
      const step = () => returnStep(value);
      if (returnAtOnce) return ongoing = step();
      return ongoing = ongoing === null ? step() : ongoing.then(step, step);
    };
    return iterator as AsyncIterableIterator<O>;
  }

  override [Symbol.asyncIterator](
    options?: ReadableStreamIteratorOptions,
  ): AsyncIterableIterator<O> {
    return this.values(options);
  }

  /**
   * As `ReadableStream.pipeTo`, but it reads the results directly (as
   * `values()` does) rather than through the stream's queue, which costs a
   * stream read per result. With a `signal` or `preventCancel`, or a locked
   * stream, the stream's own `pipeTo`.
   */
  override async pipeTo(
    destination: WritableStream<O>,
    options: StreamPipeOptions = {},
  ): Promise<void> {
    if (
      this.fast === null || this.locked || destination.locked ||
      options.signal !== undefined || options.preventCancel === true
    ) {
      return super.pipeTo(destination, options);
    }
    const writer = destination.getWriter();
    const results = this.#iterate(undefined, true);
    // The destination errored: cancel the results at once, even while a
    // read waits for the next result (a quiet pipeline).
    let destinationError: { error: unknown } | null = null;
    Promise.prototype.then.call(writer.closed, undefined, (error) => {
      destinationError ??= { error };
      return results.return!(error).catch(() => {});
    });
    let written: Promise<void> = Promise.resolve();
    for (;;) {
      try {
        await writer.ready;
      } catch (error) {
        await results.return!(error).catch(() => {});
        writer.releaseLock();
        throw error;
      }
      let next: IteratorResult<O>;
      try {
        next = await results.next();
      } catch (error) {
        // The results errored (the pipeline failed): abort the destination.
        if (options.preventAbort !== true) {
          await writer.abort(error).catch(() => {});
        }
        writer.releaseLock();
        throw error;
      }
      if (next.done) break;
      written = writer.write(next.value);
      written.catch(() => {}); // seen through `ready`, or the wait below
    }
    try {
      // Set by the destination's error, which a pending read did not see.
      const failed = destinationError as { error: unknown } | null;
      if (failed !== null) throw failed.error;
      if (options.preventClose === true) await written;
      else await writer.close();
    } finally {
      writer.releaseLock();
    }
  }
}

/**
 * Puts every item of `source` (see `Pipeline.feed`). Its signal, and the end
 * of the pipeline, are raced against each pending step of the source. A
 * source that throws, or an item that cannot be put, ends the pipeline with
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
  const ended = owner.ended;
  let closed = false;
  /** A step of the source is still pending: its iterator cannot close before it settles. */
  let stepPending = false;
  const closeSource = async () => {
    if (closed) return;
    closed = true;
    await iterator.return?.();
  };
  // What stops the feed before its source ends: one listener each for the
  // whole feed (not one per step), which rejects the pending step's wait.
  // (Racing each step against one long-lived promise would leave a reaction
  // on it per step: memory that grows with the source.)
  let interrupt: ((reason: unknown) => void) | null = null;
  const onAbort = () => interrupt?.(signal!.reason);
  const onEnd = () => interrupt?.(ended.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  ended.addEventListener("abort", onEnd, { once: true });
  const stopListening = () => {
    signal?.removeEventListener("abort", onAbort);
    ended.removeEventListener("abort", onEnd);
  };
  const untilSettledOrStopped = (step: Promise<IteratorResult<I>>) =>
    new Promise<IteratorResult<I>>((resolve, reject) => {
      interrupt = reject;
      step.then(resolve, reject);
    });
  try {
    signal?.throwIfAborted();
    ended.throwIfAborted();
    let count = 0;
    for (;;) {
      const step = iterator.next();
      let result: IteratorResult<I>;
      if (!isPromise(step)) result = step;
      else {
        stepPending = true;
        // Checked before each wait: an abort between steps has no wait to stop.
        signal?.throwIfAborted();
        ended.throwIfAborted();
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
    closed = true;
    if (close) await quietly(input.close());
  } catch (error) {
    // The source failed, or an item could not be put: the pipeline ends, so
    // that its readers learn why rather than wait for ever. (After its own
    // end, or the feed's signal, there is nothing to end.)
    if (!ended.aborted && !signal?.aborted) owner.abort(error);
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
