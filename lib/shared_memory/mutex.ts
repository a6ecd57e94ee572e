/**
 * A futex-style mutex in one word of shared memory: 0 free, 1 held, 2 held
 * with waiters. Uncontended lock and unlock are one atomic operation each. A
 * link's consumers hold it around each claim (see `LinkReader`), never while
 * a task runs, so it is held for microseconds.
 *
 * Only stage workers lock (it may sleep in `Atomics.wait`); the main thread
 * is the lone consumer of the links it reads, which need no lock.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import { Bell } from "./bell.ts";

/** Lock and unlock a mutex word. */
export class Mutex {
  /** Spins a little, then sleeps until the word at `index` of `words` is ours. */
  static lock(words: Int32Array, index: number): void {
    // Acquire: a seq-cst compare-exchange orders the claim's reads after it.
    let state = Atomics.compareExchange(words, index, 0, 1);
    if (state === 0) return;
    for (let spin = 0; spin < 100 && state !== 0; spin++) {
      state = Atomics.compareExchange(words, index, 0, 1);
      if (state === 0) return;
    }
    // Mark the word contended (2) before sleeping, so the holder notifies.
    if (state !== 2) state = Atomics.exchange(words, index, 2);
    while (state !== 0) {
      Bell.sleep(words, index, 2);
      state = Atomics.exchange(words, index, 2);
    }
  }

  /** Frees the word, waking one sleeper if there may be one. */
  static unlock(words: Int32Array, index: number): void {
    // Release: every write of the claim is ordered before the word drops; a
    // waiter (state 2) is woken only when there is one.
    if (Atomics.sub(words, index, 1) !== 1) {
      Atomics.store(words, index, 0);
      Atomics.notify(words, index, 1);
    }
  }
}
