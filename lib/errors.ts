/**
 * The errors a pipeline's callers catch.
 *
 * @module
 */

/**
 * Where a stage error happened.
 *
 * @example Usage
 * ```ts
 * import { StageError, type StageErrorOptions } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const where: StageErrorOptions = { stage: "parse", worker: 0, task: 7 };
 * const error = new StageError("task 7 failed: bad input", where);
 * assert.equal(error.task, 7);
 * ```
 */
export interface StageErrorOptions {
  /** The stage's name. */
  stage: string;
  /** The host that ran the task, for a stage on a cluster. */
  host?: string;
  /**
   * The worker's number within its stage (0-based), if one worker failed;
   * for a stage on a cluster, within its host.
   */
  worker?: number;
  /** The task's sequence number at the stage's input (0-based), if a task failed. */
  task?: number;
  /** The original error, as thrown in the worker. */
  cause?: unknown;
  /**
   * Each attempt's error, in order, for a task that was tried more than once
   * (see the stage option `retry`); the last is `cause`.
   */
  attempts?: readonly unknown[];
}

/**
 * A stage failed: a task threw, a worker was lost, or its target could not be
 * loaded. Carries the stage, the worker, the task number and the original
 * error as `cause`; for a stage on a cluster, also the host that ran it.
 *
 * @example Catch a failing task
 * ```ts
 * import { OrderedStage, Pipeline, StageError } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline<number, number>(
 *   new OrderedStage((x: number) => {
 *     if (x === 2) throw new Error("two");
 *     return x;
 *   }, 1, { name: "picky" }),
 * );
 * for (let i = 0; i < 4; i++) pipe.put(i).catch(() => {});
 * pipe.put(null).catch(() => {});
 * await assert.rejects(Array.fromAsync(pipe), (error: unknown) => {
 *   assert(error instanceof StageError);
 *   assert.equal(error.stage, "picky");
 *   assert.equal(error.task, 2);
 *   assert.equal(error.attempts.length, 1);
 *   return true;
 * });
 * ```
 */
export class StageError extends Error {
  /** The stage's name. */
  readonly stage: string;
  /** The host that ran the task, for a stage on a cluster; else undefined. */
  readonly host: string | undefined;
  /** The worker's number within its stage (within its host, on a cluster), if one worker failed. */
  readonly worker: number | undefined;
  /** The task's sequence number at the stage's input, if a task failed. */
  readonly task: number | undefined;
  /**
   * Each attempt's error, in order, the last being `cause`: one for a task
   * tried once, more under the stage option `retry`; empty when no task
   * failed (a target that cannot be loaded, a worker lost holding none).
   */
  readonly attempts: readonly unknown[];

  /** Creates a stage error; `message` says what went wrong and what to do. */
  constructor(message: string, options: StageErrorOptions) {
    const where = `stage '${options.stage}'` +
      (options.host === undefined ? "" : `, host '${options.host}'`) +
      (options.worker === undefined ? "" : `, worker ${options.worker}`) +
      (options.task === undefined ? "" : `, task ${options.task}`);
    super(`${where}: ${message}`, { cause: options.cause });
    this.name = "StageError";
    this.stage = options.stage;
    this.host = options.host;
    this.worker = options.worker;
    this.task = options.task;
    this.attempts = options.attempts ??
      (options.task === undefined || options.cause === undefined
        ? []
        : [options.cause]);
  }
}

/**
 * A task was put after the stop request, or after the pipeline was terminated.
 *
 * @example Put after the stop request
 * ```ts
 * import { OrderedStage, Pipeline, PipelineClosedError } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline<number, number>(new OrderedStage((x: number) => x));
 * await pipe.close();
 * await assert.rejects(pipe.put(1), PipelineClosedError);
 * await pipe.done;
 * ```
 */
export class PipelineClosedError extends Error {
  /** The task that was refused. */
  readonly task: unknown;

  /** Creates the error for a refused `task`. */
  constructor(message: string, task: unknown) {
    super(message);
    this.name = "PipelineClosedError";
    this.task = task;
  }
}

/**
 * `Pipeline.allocSync` found no room in the pipeline's arena: buffers held
 * by the program, by tasks in flight and by results not yet read fill it.
 *
 * @example An arena too small for a second buffer
 * ```ts
 * import { ArenaFullError, OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline(new OrderedStage((x: Uint8Array) => x), {
 *   arenaBytes: 8192,
 * });
 * const first = pipe.allocSync(8192);
 * assert.throws(() => pipe.allocSync(1), ArenaFullError);
 * pipe.free(first);
 * pipe.free(pipe.allocSync(1));
 * await pipe.close();
 * ```
 */
export class ArenaFullError extends Error {
  /** The bytes asked for. */
  readonly bytes: number;

  /** Creates the error for a request of `bytes` bytes. */
  constructor(message: string, bytes: number) {
    super(message);
    this.name = "ArenaFullError";
    this.bytes = bytes;
  }
}
