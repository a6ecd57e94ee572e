/**
 * Whether this worker is dismissed: killed by its pipeline, or it resigned
 * (gave up its place itself), or another worker failed the pipeline. Either
 * way a replacement may own its place, or nothing it does counts any more,
 * so it writes nothing shared and unwinds from its next check.
 *
 * Who calls what: the worker runtime sets the kill word, which only the main
 * thread raises (`main_thread/supervisor.ts`), and the pipeline's failure
 * word, which the first worker to fail the pipeline raises (`fail`); a worker
 * resigns when it calls `close()` or `Deno.exit()`, throws outside a task, or
 * finds its timed task taken over. The link code checks both words once per
 * claim or publish, and `resigned` once per record (a plain field read);
 * `Bell.sleep` checks before and after each sleep. On the main thread nothing
 * is ever dismissed.
 *
 * Shipped to stage workers by its source text (see `worker_thread/script.ts`),
 * so it refers only to globals and keeps its constants as static fields.
 *
 * @module
 */

/** This worker's dismissal: a kill word in shared memory and a flag of its own. */
export class Dismissal {
  /**
   * This worker's kill word and its generation, set by the worker runtime. A
   * worker blocked in `Atomics.wait` ignores `Worker.terminate()`, so the main
   * thread raises the word above the generation, wakes every sleeper, and a
   * killed worker unwinds from its next sleep. Null on the main thread.
   */
  static killWord:
    | { words: Int32Array; index: number; generation: number }
    | null = null;

  /**
   * The pipeline's failure word, set by the worker runtime: raised once a
   * worker fails the pipeline, so that every other worker stops at its next
   * claim or publish, and the main thread stops reading, at once. Its message
   * to the main thread waits behind whatever the main thread is doing (a
   * reader that always finds a result never lets a message in); meanwhile
   * the others would run every task put. Null on the main thread.
   */
  static failureWord: Int32Array | null = null;

  /**
   * A kill word's value while its worker fails the pipeline: set by the
   * worker (`fail`), it tells the main thread that a worker it loses now is
   * not to be replaced (the failure word would stop the replacement), and
   * that the loss fails the pipeline (see `Supervisor`).
   */
  static readonly FAILING = -1;

  /** This worker failed the pipeline (`fail`): it says why, even if it is killed meanwhile. */
  static failing = false;

  /**
   * Whether this worker gave up its place itself. A plain field, so the hot
   * path tests it per record: `if (Dismissal.resigned) Dismissal.unwind()`.
   */
  static resigned = false;

  /** Gives up this worker's place: from now on it writes nothing shared. */
  static resign(): void {
    Dismissal.resigned = true;
  }

  /** Whether this worker was killed, resigned, or another failed the pipeline (false on the main thread). */
  static dismissed(): boolean {
    const kill = Dismissal.killWord;
    if (Dismissal.resigned) return true;
    if (kill === null) return false;
    // Fresh loads each time: other threads write them at any moment.
    const failure = Dismissal.failureWord;
    return Atomics.load(kill.words, kill.index) > kill.generation ||
      (!Dismissal.failing && failure !== null &&
        Atomics.load(failure, 0) !== 0);
  }

  /**
   * This worker fails the pipeline: call it as soon as it knows, and again
   * before it says why. Returns false if it was dismissed first: then it says
   * nothing. Its kill word says FAILING first, by a compare-exchange that the
   * main thread's kill races: either this worker failed before it was lost,
   * and the main thread does not replace it (the first of its error and its
   * loss fails the pipeline), or it was lost first. Then the failure word
   * stops every other worker.
   */
  static fail(): boolean {
    if (Dismissal.failing) return true;
    const kill = Dismissal.killWord;
    if (kill === null) return !Dismissal.resigned;
    if (Dismissal.dismissed()) return false;
    const word = Atomics.load(kill.words, kill.index);
    const failing = Dismissal.FAILING;
    if (
      Atomics.compareExchange(kill.words, kill.index, word, failing) !== word
    ) {
      return false;
    }
    Dismissal.failing = true;
    if (Dismissal.failureWord !== null) {
      Atomics.store(Dismissal.failureWord, 0, 1);
    }
    return true;
  }

  /** Unwinds if this worker was dismissed, so that it writes nothing more and closes itself. */
  static throwIfDismissed(): void {
    if (Dismissal.dismissed()) Dismissal.unwind();
  }

  /** Throws the error a dismissed worker unwinds with. */
  static unwind(): never {
    throw new Error(Dismissal.MESSAGE);
  }

  /** The message of the error a dismissed worker unwinds with. */
  static readonly MESSAGE =
    "This worker was dismissed: killed by its pipeline, or it gave up its place";
}
