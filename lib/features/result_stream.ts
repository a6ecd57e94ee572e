/**
 * The pipeline's readable stream: a `ReadableStream` of results whose
 * `for await`, `values()` and `pipeTo` read the results directly, as
 * `results()` does, rather than one stream read per result. `PipelineStreams`
 * (`streams.ts`) makes it and gives it its way to the results; `feed` reads
 * another pipeline's results through `feedIterator()`.
 *
 * @module
 */

/** What async generators inherit: `[Symbol.asyncIterator]`, and `[Symbol.asyncDispose]` where Deno has it. */
const ASYNC_ITERATOR_PROTOTYPE: object = Object.getPrototypeOf(
  Object.getPrototypeOf(async function* () {}).prototype,
);

/**
 * The pipeline's readable stream. `for await` over it (`values()`) reads
 * the pipeline's results directly, as `results()` does, while it holds the
 * stream's lock, since a stream read per result costs several times a
 * result's own way through the pipeline; the results the stream had read
 * ahead come first; `pipeTo` does the same. Every other reader
 * (`getReader()`, a `pipeTo` with a signal) reads the stream as any other.
 */
export class ResultStream<O> extends ReadableStream<O> {
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
