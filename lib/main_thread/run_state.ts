/**
 * The pipeline's state as a whole: whether the stop request was put, whether
 * it failed, whether it was terminated. `Pipeline` owns it; the other parts
 * read it through `RunView`, and the input records the stop request through
 * `StopRequest`.
 *
 * @module
 */

import type { StageError } from "../errors.ts";

/** What the pipeline's parts may read of its state. */
export interface RunView {
  /** The failure that cut the run short, if one did. */
  readonly failure: StageError | null;
  /** Whether `terminate()` cut the run short (or its input's abort, below). */
  readonly terminated: boolean;
  /**
   * Why the input side cut the run short, if it did: the writable's
   * `abort(reason)`, or a feed's source that threw. Readers get the reason
   * instead of the end, as the readable of a `TransformStream` does.
   */
  readonly abortedBy: { reason: unknown } | null;
  /** Whether the stop request was put (it may still be waiting for room). */
  readonly stopRequested: boolean;
}

/** What the input may change: the stop request, put or withdrawn (its `put` was aborted). */
export interface StopRequest extends RunView {
  stopRequested: boolean;
}

/** The one owner of the pipeline's state. */
export class RunState implements StopRequest {
  failure: StageError | null = null;
  terminated = false;
  abortedBy: { reason: unknown } | null = null;
  stopRequested = false;

  /** Whether the run was cut short: the pipeline failed or was terminated. */
  get cutShort(): boolean {
    return this.failure !== null || this.terminated;
  }
}
