/**
 * The pipeline's options and the options of its calls: their types, their
 * checks, and the default spin.
 *
 * @module
 */

import type { GetOptions } from "../stage/stage_options.ts";
import {
  checkBoolean,
  checkName,
  checkObject,
  checkOptionNames,
  checkPositiveInteger,
  checkSignal,
  describe,
} from "../checks.ts";

/**
 * Options of a pipeline.
 *
 * @example Usage
 * ```ts
 * import { OrderedStage, Pipeline, type PipelineOptions } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const options: PipelineOptions = { ringBytes: 1 << 16 };
 * const pipe = new Pipeline(new OrderedStage((x: number) => x + 1), options);
 * await pipe.feed([1, 2]);
 * assert.deepEqual(await Array.fromAsync(pipe), [2, 3]);
 * ```
 */
export interface PipelineOptions {
  /**
   * Bytes of each ring between two workers (a power of two, at least 4096).
   * Records larger than a quarter of it are carried in fragments.
   * @default {1048576}
   */
  ringBytes?: number;
  /**
   * How many times an idle thread (a worker waiting for tasks, or the main
   * thread waiting for results) looks again before it sleeps. Spinning saves
   * the tens of microseconds a wake-up costs, but only while the thread it
   * waits for runs on another core: with more threads than cores, a spinning
   * thread takes CPU from the very threads it waits for. A longer spin trims
   * the tail of one-at-a-time round trips, at that much CPU per idle gap.
   * @default {2000 when the pipeline's workers and the main thread fit in
   * `navigator.hardwareConcurrency` cores, else 0}
   */
  spin?: number;
  /**
   * Show the pipeline's progress on stderr (never stdout) while it runs, and
   * a summary when it is done: `true`, or the display's options. On a
   * terminal it redraws one line per stage; elsewhere (CI, a log file) it
   * writes a plain line per stage every `intervalMs`. It stops by itself
   * once every worker has exited, and never keeps the program alive.
   * @default {false}
   */
  progress?: boolean | ProgressOptions;
  /**
   * The pipeline's name, in the dashboard and the metrics
   * (`@mpipe/mpipe/dashboard`): a non-empty string.
   * @default {`pipeline-1`, `pipeline-2`, … in the order pipelines are created}
   */
  name?: string;
  /**
   * The budget of the elastic stages (`size` given as `{ min, max }`): how
   * many workers, above their `min`s, they may add together (a positive
   * integer). Once it is spent, a stage that holds the run back takes a
   * worker from an elastic stage whose workers mostly wait (see the README's
   * "Elastic stages").
   * @default {navigator.hardwareConcurrency}
   */
  threads?: number;
  /**
   * Bytes of the pipeline's arena, the shared memory that `alloc` hands out
   * for large binary payloads, which then travel by reference (see
   * `Pipeline.alloc`). It is reserved, not committed: memory is taken only
   * as allocations reach it, so a pipeline that never allocates pays
   * nothing. 0: no arena. A multiple of 4096, at most 2^32.
   * @default {268435456 (256 MiB)}
   */
  arenaBytes?: number;
  /**
   * Check the arena's use: freed space is filled with `0xdb` bytes, and a
   * handle to freed space is an error, so a buffer used after it was put
   * shows in tests. Also on with the environment variable
   * `MPIPE_ARENA_DEBUG=1` (when the program may read it).
   * @default {false}
   */
  arenaDebug?: boolean;
}

/**
 * Options of the progress display (`PipelineOptions.progress`).
 *
 * @example A bar, a percentage and an ETA for a known number of tasks
 * ```ts
 * import { OrderedStage, Pipeline, type ProgressOptions } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const progress: ProgressOptions = { total: 3, intervalMs: 500 };
 * const pipe = new Pipeline<number, number>(
 *   new OrderedStage((x: number) => x + 1),
 *   { progress },
 * );
 * for (let i = 0; i < 3; i++) pipe.put(i);
 * pipe.put(null);
 * assert.deepEqual(await Array.fromAsync(pipe), [1, 2, 3]);
 * await pipe.done; // the display has written its summary to stderr
 * ```
 */
export interface ProgressOptions {
  /**
   * The number of tasks you will put (a non-negative integer): each stage's
   * line then gets a bar, a percentage and an ETA, measured against it as if
   * every stage took one task per task put (as in a chain of stages that
   * each return one result per task).
   * @default {unknown: no bar}
   */
  total?: number;
  /**
   * Ms between two updates (a positive number).
   * @default {200 on a terminal, else 1000}
   */
  intervalMs?: number;
}

/**
 * Options of `put`.
 *
 * @example Usage
 * ```ts
 * import { OrderedStage, Pipeline, type PutOptions } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline(new OrderedStage((x: number) => x));
 * const options: PutOptions = { signal: AbortSignal.timeout(1000) };
 * await pipe.put(1, options);
 * await pipe.put(null);
 * assert.deepEqual(await Array.fromAsync(pipe), [1]);
 * ```
 */
export interface PutOptions {
  /** Withdraw the task if it is still waiting for room when this signal aborts. */
  signal?: AbortSignal;
  /**
   * Copy the task's typed arrays into the pipeline's arena once, so that
   * they travel by reference from there on; each one's buffer is given up
   * (detached), as with `postMessage`'s transfer. A typed array the arena
   * has no room for is copied as usual.
   * @default {false}
   */
  transfer?: boolean;
}

/** The pipeline's options, checked, with their defaults. */
export interface CheckedPipelineOptions {
  ringBytes: number;
  /** Undefined: the default spin, once the number of workers is known. */
  spin: number | undefined;
  /** The progress display's options, or null for none. */
  progress: ProgressOptions | null;
  /** The pipeline's name, or undefined for the next default one. */
  name: string | undefined;
  threads: number;
  arenaBytes: number;
  arenaDebug: boolean;
}

/** The arena's default size: reserved address space, committed as it is used. */
export const ARENA_BYTES = 2 ** 28;

/** Whether `MPIPE_ARENA_DEBUG=1` is set (false when the program may not read it). */
function arenaDebugFromEnv(): boolean {
  try {
    return Deno.env.get("MPIPE_ARENA_DEBUG") === "1";
  } catch {
    return false;
  }
}

/** The default spin when every thread of the pipeline has a core of its own. */
export const SPIN = 2000;

/**
 * The spin of a pipeline of `threads` threads (its workers and the main
 * thread): spin briefly, and only when each has a core of its own, since a
 * spinning thread takes CPU from the threads it waits for. (The README's
 * performance section has the measurements.)
 */
export function defaultSpin(
  threads: number,
  cores: number = navigator.hardwareConcurrency,
): number {
  return threads <= cores ? SPIN : 0;
}

/** Checks the options of `new Pipeline`; throws a `TypeError` or `RangeError` naming the bad one. */
export function checkPipelineOptions(options: unknown): CheckedPipelineOptions {
  checkOptionNames(
    "Pipeline",
    checkObject("Pipeline", "options", options),
    [
      "ringBytes",
      "spin",
      "progress",
      "name",
      "threads",
      "arenaBytes",
      "arenaDebug",
    ],
    "pipeline",
  );
  const {
    ringBytes = 1 << 20,
    spin,
    progress = false,
    name,
    threads = navigator.hardwareConcurrency,
    arenaBytes = ARENA_BYTES,
    arenaDebug = arenaDebugFromEnv(),
  } = options as PipelineOptions;
  checkPositiveInteger("Pipeline", "options.threads", threads);
  if (
    typeof arenaBytes !== "number" || !Number.isInteger(arenaBytes) ||
    arenaBytes < 0 || arenaBytes % 4096 !== 0 || arenaBytes > 2 ** 32
  ) {
    throw new RangeError(
      `Pipeline: 'options.arenaBytes' must be 0 or a multiple of 4096 up to 2^32, got ${
        describe(arenaBytes)
      }`,
    );
  }
  checkBoolean("Pipeline", "options.arenaDebug", arenaDebug);
  if (
    typeof ringBytes !== "number" || !Number.isInteger(ringBytes) ||
    ringBytes < 4096 || (ringBytes & (ringBytes - 1)) !== 0 ||
    ringBytes > 1 << 30
  ) {
    throw new RangeError(
      `Pipeline: 'options.ringBytes' must be a power of two from 4096 to 2^30, got ${
        describe(ringBytes)
      }`,
    );
  }
  if (
    spin !== undefined &&
    (typeof spin !== "number" || !Number.isInteger(spin) || spin < 0)
  ) {
    throw new RangeError(
      `Pipeline: 'options.spin' must be a non-negative integer, got ${
        describe(spin)
      }`,
    );
  }
  checkName("Pipeline", "options.name", name);
  return {
    ringBytes,
    spin,
    progress: checkProgress(progress),
    name,
    threads,
    arenaBytes,
    arenaDebug,
  };
}

/** Checks `options.progress`: a boolean or `{ total?, intervalMs? }`. */
function checkProgress(progress: unknown): ProgressOptions | null {
  if (progress === false) return null;
  if (progress === true) return {};
  if (typeof progress !== "object" || progress === null) {
    throw new TypeError(
      `Pipeline: 'options.progress' must be a boolean or an object ({ total?, intervalMs? }), got ${
        describe(progress)
      }`,
    );
  }
  checkOptionNames(
    "Pipeline",
    progress,
    ["total", "intervalMs"],
    "progress",
    "options.progress",
  );
  const { total, intervalMs } = progress as ProgressOptions;
  if (
    total !== undefined &&
    (typeof total !== "number" || !Number.isInteger(total) || total < 0)
  ) {
    throw new RangeError(
      `Pipeline: 'options.progress.total' must be a non-negative integer (the number of tasks you will put), got ${
        describe(total)
      }`,
    );
  }
  if (
    intervalMs !== undefined &&
    (typeof intervalMs !== "number" || !(intervalMs > 0) ||
      !Number.isFinite(intervalMs))
  ) {
    throw new RangeError(
      `Pipeline: 'options.progress.intervalMs' must be a positive number of milliseconds, got ${
        describe(intervalMs)
      }`,
    );
  }
  return { total, intervalMs };
}

/** What `checkCallOptions` returns for no options: one object, not one per call. */
const NO_CALL_OPTIONS = Object.freeze({
  timeout: undefined,
  signal: undefined,
});

/** Checks the options of `call`: `{ timeout?, signal? }` (`put` takes no timeout). */
export function checkCallOptions(
  call: "get" | "results" | "put",
  options: GetOptions | PutOptions | undefined,
): {
  timeout?: number | undefined;
  signal: AbortSignal | undefined;
  transfer?: boolean;
} {
  if (options === undefined) return NO_CALL_OPTIONS;
  checkOptionNames(
    call,
    checkObject(call, "options", options),
    call === "put" ? ["signal", "transfer"] : ["timeout", "signal"],
  );
  const { timeout, signal, transfer } = options as GetOptions & PutOptions;
  if (
    timeout !== undefined &&
    (typeof timeout !== "number" || Number.isNaN(timeout) || timeout < 0)
  ) {
    throw new RangeError(
      `${call}: 'options.timeout' must be a non-negative number of milliseconds, got ${
        describe(timeout)
      }`,
    );
  }
  checkSignal(call, "options.signal", signal);
  checkBoolean(call, "options.transfer", transfer);
  return { timeout, signal, transfer };
}
