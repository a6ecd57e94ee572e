/**
 * How a worker waits for input when a claim found nothing: it spins a while
 * (records may be microseconds away), then arms the input's doorbell so that
 * its next claim is the re-check, and when that one finds nothing too it
 * sleeps. Records a claim cannot take (an ordered merge waiting for another
 * ring) end the spin early, so the worker still comes to sleep. A worker of
 * an elastic stage sleeps at most until it has waited `idleMs`, then asks to
 * leave (see `Leaving`); it asks too whenever it is about to sleep, in case
 * the main thread wants a worker of its stage elsewhere.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import { Bell } from "../shared_memory/bell.ts";
import type { LinkReader } from "../shared_memory/link_reader.ts";

/** How an idle worker of an elastic stage leaves. */
export interface Leaving {
  /** Ms a worker waits for tasks before it leaves (the stage's `idleMs`). */
  idleMs: number;
  /**
   * Whether this worker, idle for `idleFor` ms, leaves now: it has waited
   * `idleMs`, or the main thread asks a worker of its stage to leave, and
   * the stage keeps its `min`. True takes it off the stage's running count.
   */
  mayLeave(idleFor: number): boolean;
}

/** A worker's idle state between claims. */
export class IdleWait {
  readonly #input: LinkReader;
  readonly #spin: number;
  readonly #leaving: Leaving | null;
  /** When the worker began to wait (performance.now()), or -1 while it works. */
  #idleSince = -1;
  #spinLeft = 0;
  /** The doorbell is armed: the next empty claim sleeps on `#counter`. */
  armed = false;
  #counter = 0;
  /** Settles when a task in flight completes (see `untilCompletion`). */
  #completion: PromiseWithResolvers<void> | null = null;

  constructor(input: LinkReader, spin: number, leaving: Leaving | null) {
    this.#input = input;
    this.#spin = spin;
    this.#leaving = leaving;
  }

  /** A claim found tasks: spin afresh next time. */
  reset(): void {
    this.#spinLeft = this.#spin;
    this.armed = false;
    this.#idleSince = -1;
  }

  /**
   * A claim found nothing: spin, or arm, or sleep (blocking). True when the
   * worker of an elastic stage leaves instead (it holds no task: it claimed
   * none since its last ones were done).
   */
  idle(): boolean {
    const input = this.#input;
    if (this.armed) {
      this.armed = false;
      if (this.#leaving === null) input.sleep(this.#counter);
      else return this.#sleepOrLeave(this.#leaving);
      return false;
    }
    while (this.#spinLeft > 0) {
      this.#spinLeft--;
      if (input.hasData()) return false;
    }
    this.arm();
    return false;
  }

  /** Leaves, or sleeps until the bell rings or the worker has waited `idleMs`. */
  #sleepOrLeave(leaving: Leaving): boolean {
    const now = performance.now();
    if (this.#idleSince < 0) this.#idleSince = now;
    const idleFor = now - this.#idleSince;
    if (leaving.mayLeave(idleFor)) return true;
    const left = leaving.idleMs - idleFor;
    const input = this.#input;
    Bell.sleep(
      input.bell,
      input.bellBase + Bell.COUNTER,
      this.#counter,
      left > 0 ? left : Infinity,
    );
    return false;
  }

  /** Arms the doorbell: look once more, then sleep (`idle`) or wait (`untilRung`). */
  arm(): void {
    this.#counter = this.#input.arm();
    this.armed = true;
  }

  /**
   * With tasks in flight, a wait that does not block the thread (their
   * awaits run on its event loop): until one of them completes, and if the
   * last claim found nothing (`claimedNone`), until input arrives too.
   * Undefined when it only armed the doorbell: the caller claims once more.
   */
  untilCompletion(claimedNone: boolean): Promise<unknown> | undefined {
    if (claimedNone && !this.armed) {
      this.arm();
      return undefined;
    }
    this.#completion ??= Promise.withResolvers<void>();
    return claimedNone
      ? Promise.race([this.#completion.promise, this.untilRung()])
      : this.#completion.promise;
  }

  /** A task in flight completed: ends the wait of `untilCompletion`. */
  completed(): void {
    const completion = this.#completion;
    this.#completion = null;
    completion?.resolve();
  }

  /** Settles when the armed doorbell rings, without blocking (tasks are in flight). */
  untilRung(): Promise<unknown> {
    this.armed = false;
    return this.#input.sleepAsync(this.#counter);
  }
}
