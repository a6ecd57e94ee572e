/**
 * What a stage keeps out of its public face: its target as shipped, its
 * settings, its links, and the pipeline that owns it once built. `Stage`
 * writes it; the pipeline's parts read it.
 *
 * @module
 */

import type { StageError } from "../errors.ts";
import type { Cluster } from "./cluster.ts";
import type { GetOptions } from "./stage_options.ts";
import type { StageStatus } from "../shared_memory/status.ts";
import type { ShippedTarget } from "./target.ts";
import type { StagePermissions } from "./permissions.ts";
import type { RetryConfig } from "./retry_option.ts";

/**
 * A stage of any task and result type, as the pipeline's parts handle it:
 * its public face, whose settings and links `internalsOf` gives. Every
 * `Stage` is one (declared here, below `stage.ts`, so that the files
 * `stage.ts` imports need not import it back).
 */
export interface AnyStage {
  readonly name: string;
  readonly size: number;
}

/** What a built pipeline offers its stages. */
export interface StageOwner {
  getFrom(stage: AnyStage, options?: GetOptions): Promise<unknown>;
  resultsFrom(
    stage: AnyStage,
    options?: GetOptions,
  ): AsyncIterableIterator<unknown>;
}

/** A stage's wiring and settings, for the pipeline that builds it. */
export interface StageInternals {
  shipped: ShippedTarget;
  /** Whether the stage keeps order; undefined until a module target is inspected. */
  ordered: boolean | undefined;
  /** Whether the target must be a worker class (`Stage`). */
  classOnly: boolean;
  disableResult: boolean;
  doStopTask: boolean;
  maxBacklog: number;
  args: unknown[];
  onError: "fail" | "skip" | ((error: StageError) => void);
  restart: boolean;
  taskTimeout: number;
  /**
   * An elastic stage's fewest workers and how long one waits idle before
   * it leaves; null for a fixed size (`size` is then its workers, else its
   * most workers).
   */
  elastic: { min: number; idleMs: number } | null;
  /** The most tasks one worker runs at once. */
  concurrency: number;
  /** Its retry policy (`attempts` 1: none), and `when` itself for the main thread. */
  retry: RetryConfig;
  retryWhen: ((error: unknown, attempt: number) => boolean) | null;
  /** The workers or hosts one task may cost before it is quarantined; undefined for the default (`DEFAULT_CRASH_BUDGET`, or a remote stage's cluster's). */
  crashBudget: number | undefined;
  /** The permissions of its workers. */
  permissions: StagePermissions;
  /** The cluster the stage runs on, or null for this process's workers. */
  cluster: Cluster | null;
  /** A remote stage's stand-in worker, once its pipeline opened a run. */
  standIn: { module: string; args: unknown[] } | null;
  /** The worker hosts a remote stage's stand-in has had answers from, in the order it first did. */
  hosts: string[];
  /** The stage's status block, once a pipeline is built. */
  status: StageStatus | null;
  next: AnyStage[];
  previous: AnyStage[];
  owner: StageOwner | null;
  /** A FilterStage's sub-pipeline roots and settings. */
  filter: {
    stages: AnyStage[];
    maxTasks: number;
    dropResults: boolean;
    cacheResults: boolean;
    doStopTask: boolean;
  } | null;
}

const internals = new WeakMap<object, StageInternals>();

/** The settings and links of `stage`; undefined for an object that is not a Stage. */
export function internalsOf(stage: AnyStage): StageInternals {
  return internals.get(stage)!;
}

/**
 * How many workers `stage` runs in this process: its size, or 1 for a
 * remote stage, whose one stand-in worker runs `size` tasks at once.
 */
export function workersOf(stage: AnyStage): number {
  return internals.get(stage)!.cluster === null ? stage.size : 1;
}

/** Records a new stage's settings (its constructor does). */
export function setInternals(stage: object, state: StageInternals): void {
  internals.set(stage, state);
}
