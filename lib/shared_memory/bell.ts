/**
 * The doorbell threads sleep on. A dismissed worker's sleep throws instead
 * (see `dismissal.ts`).
 *
 * Who calls what: any thread may `arm` a bell and sleep on it, any thread may
 * `ring` it. Only stage workers (and the worker-side link code) call `sleep`,
 * since the main thread never blocks; it waits with `Atomics.waitAsync`.
 *
 * Shipped to stage workers by its source text (see `worker_thread/script.ts`), so it
 * refers only to globals and keeps its constants as static fields.
 *
 * @module
 */

import { Dismissal } from "./dismissal.ts";

/**
 * A doorbell: a wake-up counter and a "someone may be waiting" flag, two
 * adjacent words of an `Int32Array`.
 *
 * Waiting takes three steps, in this order: read the counter (`arm`), then
 * re-check the condition, then sleep on the counter value read. Reading the
 * counter before raising the flag is what makes a wake-up impossible to lose: a
 * signaller that finds the flag raised bumps the counter, so the sleeper's
 * `Atomics.wait` returns at once even if the bump came before it slept.
 * Signallers check the flag first, so a bell nobody waits on costs one load.
 */
export class Bell {
  /** Offset of the wake-up counter from the bell's base index. */
  static readonly COUNTER = 0;
  /** Offset of the waiting flag from the bell's base index. */
  static readonly WAITING = 1;

  /** Reads the counter and raises the flag; re-check, then sleep on the result. */
  static arm(words: Int32Array, base: number): number {
    // Counter first, flag second: a ring that sees the flag bumps a counter
    // that was already read, so the sleep that follows returns at once.
    const counter = Atomics.load(words, base + Bell.COUNTER);
    Atomics.store(words, base + Bell.WAITING, 1);
    return counter;
  }

  /** Wakes every waiter, if the flag says there may be one. */
  static ring(words: Int32Array, base: number): void {
    // The plain-looking load is the cheap test; the exchange makes exactly one
    // ringer pay for the bump and the notify.
    if (
      Atomics.load(words, base + Bell.WAITING) !== 0 &&
      Atomics.exchange(words, base + Bell.WAITING, 0) !== 0
    ) {
      Atomics.add(words, base + Bell.COUNTER, 1);
      Atomics.notify(words, base + Bell.COUNTER);
    }
  }

  /** Wakes every waiter unconditionally (a ring stopped, the run failed or ended). */
  static ringAlways(words: Int32Array, base: number): void {
    Atomics.store(words, base + Bell.WAITING, 0);
    // The bump changes the value a sleeper compares, so none can miss it.
    Atomics.add(words, base + Bell.COUNTER, 1);
    Atomics.notify(words, base + Bell.COUNTER);
  }

  /**
   * `Atomics.wait` for workers, which throws once this worker was dismissed.
   * It checks before sleeping too: a worker that was still starting when it
   * was killed may come to sleep after the wake-ups (the main thread raises
   * the kill word before it wakes anyone, so one of the checks sees it). An
   * idle worker of an elastic stage sleeps at most `timeout` ms.
   */
  static sleep(
    words: Int32Array,
    index: number,
    value: number,
    timeout = Infinity,
  ): void {
    Dismissal.throwIfDismissed();
    Atomics.wait(words, index, value, timeout);
    Dismissal.throwIfDismissed();
  }
}
