/**
 * What a stage worker is told when it starts: written by the main thread
 * (`main_thread/wiring.ts`), read by the worker runtime and its runners.
 * Types only, so that the runtime and the runners it drives share it without
 * importing each other.
 *
 * @module
 */

import type { ArenaMemory } from "../shared_memory/arena.ts";
import type { ReadMode } from "../shared_memory/link_reader.ts";
import type { Branch } from "../shared_memory/link_writer.ts";
import type { ShippedTarget } from "../stage/target.ts";
import type { FilterConfig } from "./filter_runtime.ts";
import type { ElasticConfig } from "./elastic_place.ts";
import type { RetryConfig } from "../stage/retry_option.ts";

/** What a worker is told when it starts. */
export interface WorkerConfig {
  stage: string;
  index: number;
  target: ShippedTarget;
  ordered: boolean;
  args: unknown[];
  disableResult: boolean;
  doStopTask: boolean;
  input: {
    control: SharedArrayBuffer;
    rings: SharedArrayBuffer[];
    mode: ReadMode;
  };
  outputs: Branch[];
  /** How many times to look for input before sleeping. */
  spin: number;
  /** What a failed task does: fail the pipeline, or drop the task and go on (and report it, for an onError callback). */
  onError: "fail" | "skip" | "report";
  /** The pipeline's failure word, one Int32 (see `Dismissal.failureWord`). */
  failure: SharedArrayBuffer;
  /** The stage's status block (StageStatus) and its number of workers. */
  status: SharedArrayBuffer;
  size: number;
  /** Record when each task starts (the stage has a taskTimeout). */
  timed: boolean;
  /**
   * The most tasks a worker claims at once while tasks are fast: 1 keeps a
   * lost worker to the one task it runs; a small number in a stage of several
   * workers bounds what a sudden slow task can hold back from the others.
   */
  maxClaim: number;
  /** How many workers held this place before (0, or more after restarts). */
  generation: number;
  /** The most tasks this worker runs at once (the stage's `concurrency`). */
  concurrency: number;
  /** The stage's taskTimeout (ms), or Infinity. */
  taskTimeout: number;
  /** When the main thread spawned this worker (ms since the epoch). */
  spawnedAt: number;
  /** What this replacement takes over from the lost worker whose place it takes. */
  recover: Recovery | null;
  /** The stage's retry policy, or null if it does not retry (`attempts` 1). */
  retry: RetryConfig | null;
  /** The stage is a FilterStage: run the built-in filter, not a target. */
  filter: FilterConfig | null;
  /** An elastic stage's settings; null for a fixed size. */
  elastic: ElasticConfig | null;
  /** The pipeline's arena and this worker's place in it, or null for none. */
  arena: { memory: ArenaMemory; holder: number } | null;
}

/**
 * What a replacement takes over from the lost worker whose place it takes:
 * the tasks it held that were dropped, in order, to mark done
 * (`Ring.TASK_DONE`), one past the last task it claimed, and under `retry`
 * the tasks to try again.
 */
export interface Recovery {
  tasks: number[];
  to: number;
  retry: RetriedTask[];
}

/**
 * A task a lost worker held, to try again (see `Recovery`): its record, the
 * attempt it is at and the errors of the attempts before; a new attempt, or
 * (`rerun`) the same one again, cut short by another task that lost the
 * worker.
 */
export interface RetriedTask {
  seq: number;
  record: Uint8Array;
  attempt: number;
  errors: unknown[];
  rerun: boolean;
}
