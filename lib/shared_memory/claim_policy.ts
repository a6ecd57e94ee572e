/**
 * How many records a consumer takes per claim: the one place these numbers
 * live. A claim is one lock (for a shared link) and one stamp for all it takes, so
 * bigger claims cost less per record; smaller ones bound what a slow task can
 * hold back from the other workers of its stage.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

/** The claim sizes of every consumer: stage workers, filters and the main thread. */
export class ClaimPolicy {
  /** Most results the main thread claims from a leaf's rings at once. */
  static readonly READER = 256;
  /** Most results a filter collects from one sub-pipeline at once. */
  static readonly FILTER_COLLECT = 256;
  /** Most fast tasks a worker claims at once when it is alone in its stage. */
  static readonly SOLE = 64;
  /** Most fast tasks a worker claims at once when it shares its stage. */
  static readonly SHARED = 16;
  /** Tasks slower than this (ms, on average over a claim) are claimed one at a time. */
  static readonly SLOW_TASK_MS = 0.05;

  /**
   * The most tasks a worker of a stage claims at once: 1 when a lost worker
   * must hold no more than the task it runs (`restart`, `taskTimeout`).
   */
  static maxClaim(size: number, holdOne: boolean): number {
    if (holdOne) return 1;
    return size > 1 ? ClaimPolicy.SHARED : ClaimPolicy.SOLE;
  }
}
