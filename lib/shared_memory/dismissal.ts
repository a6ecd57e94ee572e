/**
 * Whether this worker is dismissed: killed by its pipeline, or it resigned
 * (gave up its place itself). Either way a replacement may own its place, so
 * it writes nothing shared any more and unwinds from its next check.
 *
 * Who calls what: the worker runtime sets the kill word, which only the main
 * thread raises (`main_thread/supervisor.ts`); a worker resigns when it calls
 * `close()` or `Deno.exit()`, throws outside a task, or finds its timed task
 * taken over. The link code checks the kill word once per claim or publish,
 * and `resigned` once per record (a plain field read); `Bell.sleep` checks
 * before and after each sleep. On the main thread nothing is ever dismissed.
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
   * Whether this worker gave up its place itself. A plain field, so the hot
   * path tests it per record: `if (Dismissal.resigned) Dismissal.unwind()`.
   */
  static resigned = false;

  /** Gives up this worker's place: from now on it writes nothing shared. */
  static resign(): void {
    Dismissal.resigned = true;
  }

  /** Whether this worker was killed by its pipeline or resigned (false on the main thread). */
  static dismissed(): boolean {
    const kill = Dismissal.killWord;
    // A fresh load each time: the main thread writes it at any moment.
    return Dismissal.resigned ||
      (kill !== null && Atomics.load(kill.words, kill.index) > kill.generation);
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
