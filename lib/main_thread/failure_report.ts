/**
 * How a pipeline's failure reaches the program, and the rule that keeps it
 * from crashing the process too early or from being lost:
 *
 * - The pipeline's own promises (`put`s that wait for room, a `put` after the
 *   failure, `done`) never count as unhandled rejections: a program may
 *   leave its `put`s un-awaited, as the cookbook does, and may await `done`
 *   long after the failure.
 * - A failure is *observed* when it reaches code that waits for it: a read
 *   (`get`, `results()`, iteration, `readable`) rejects with it, or code
 *   awaits (or attaches a handler to) a `put` or `done` that rejects with it.
 * - A failure that nothing has observed when the program would end (its event
 *   loop has nothing left to do) is reported then, as an uncaught error: Deno
 *   prints it and exits with code 1. So a failure is never silent.
 *
 * @module
 */

/**
 * A Promise that notes when code waits for it (`await`, `then`, `catch`), so
 * that the failure it carries counts as observed. It is created handled: its
 * rejection never counts as unhandled by itself.
 */
export class WatchedPromise<T> extends Promise<T> {
  /** Promises made from it (`then`) are plain. */
  static override get [Symbol.species](): PromiseConstructor {
    return Promise;
  }

  /** Whether code waits for it. */
  watched = false;
  /** Called when code first waits for it. */
  onWatched: (() => void) | null = null;

  /** Makes a promise whose executor gets `resolve` and `reject`; it starts handled. */
  static create<T>(
    executor: (
      resolve: (value: T) => void,
      reject: (reason: unknown) => void,
    ) => void,
  ): WatchedPromise<T> {
    const promise = new WatchedPromise<T>(executor);
    // The library's own handler, which does not count as waiting.
    Promise.prototype.then.call(promise, undefined, () => {});
    return promise;
  }

  /** A handled promise rejected with `reason`, which calls `onWatched` when awaited. */
  static rejected(
    reason: unknown,
    onWatched: () => void,
  ): WatchedPromise<never> {
    const promise = WatchedPromise.create<never>((_, reject) => reject(reason));
    promise.onWatched = onWatched;
    return promise;
  }

  override then<R1 = T, R2 = never>(
    onFulfilled?: ((value: T) => R1 | PromiseLike<R1>) | null,
    onRejected?: ((reason: unknown) => R2 | PromiseLike<R2>) | null,
  ): Promise<R1 | R2> {
    if (!this.watched) {
      this.watched = true;
      this.onWatched?.();
    }
    return super.then(onFulfilled, onRejected);
  }
}

/** Reports a pipeline's failure when the program would end, unless something observed it first. */
export class FailureReport {
  #observed = false;
  #listener: (() => void) | null = null;

  /**
   * The pipeline failed with `error` (a stage's, or the error of a feed's
   * source that ended the run): report it at the end unless it is observed.
   */
  failed(error: unknown): void {
    if (this.#observed || this.#listener !== null) return;
    // A worker's global scope has no such event: there, a failure nobody
    // observes is as silent as any other rejection a worker ignores.
    if (!("onbeforeunload" in globalThis)) return;
    this.#listener = () => {
      this.#stopListening();
      if (!this.#observed) reportError(error);
    };
    globalThis.addEventListener("beforeunload", this.#listener);
  }

  /** Whether the failure reached code that waits for it. */
  get wasObserved(): boolean {
    return this.#observed;
  }

  /** The failure reached code that waits for it. */
  observed(): void {
    this.#observed = true;
    this.#stopListening();
  }

  #stopListening(): void {
    if (this.#listener === null) return;
    globalThis.removeEventListener("beforeunload", this.#listener);
    this.#listener = null;
  }
}
