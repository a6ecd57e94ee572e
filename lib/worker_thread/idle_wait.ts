/**
 * How a worker waits for input when a claim found nothing: it spins a while
 * (records may be microseconds away), then arms the input's doorbell so that
 * its next claim is the re-check, and when that one finds nothing too it
 * sleeps. Records a claim cannot take (an ordered merge waiting for another
 * ring) end the spin early, so the worker still comes to sleep.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import type { LinkReader } from "../shared_memory/link_reader.ts";

/** A worker's idle state between claims. */
export class IdleWait {
  readonly #input: LinkReader;
  readonly #spin: number;
  #spinLeft = 0;
  /** The doorbell is armed: the next empty claim sleeps on `#counter`. */
  armed = false;
  #counter = 0;
  /** Settles when a task in flight completes (see `untilCompletion`). */
  #completion: PromiseWithResolvers<void> | null = null;

  constructor(input: LinkReader, spin: number) {
    this.#input = input;
    this.#spin = spin;
  }

  /** A claim found tasks: spin afresh next time. */
  reset(): void {
    this.#spinLeft = this.#spin;
    this.armed = false;
  }

  /** A claim found nothing: spin, or arm, or sleep (blocking). */
  idle(): void {
    const input = this.#input;
    if (this.armed) {
      this.armed = false;
      input.sleep(this.#counter);
      return;
    }
    while (this.#spinLeft > 0) {
      this.#spinLeft--;
      if (input.hasData()) return;
    }
    this.arm();
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
