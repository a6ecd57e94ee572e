/**
 * The options of a stage (their type, their checks and their defaults), and
 * the options of reading its results.
 *
 * @module
 */

import type { StageError } from "../errors.ts";
import { checkPermissions, type StagePermissions } from "./permissions.ts";
import type { Cluster } from "./cluster.ts";
import { crashBudget, type RetryOptions, retryPolicy } from "./retry_option.ts";
import {
  checkBoolean,
  checkName,
  checkObject,
  checkOptionNames,
  checkPositiveInteger,
  describe,
} from "../checks.ts";

/**
 * Options of a stage.
 *
 * @example Usage
 * ```ts
 * import { OrderedStage, Pipeline, type StageOptions } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const options: StageOptions = { name: "halve", onError: "skip" };
 * const halve = new OrderedStage((x: number) => {
 *   if (x % 2 !== 0) throw new Error(`${x} is odd`);
 *   return x / 2;
 * }, 2, options);
 * const pipe = new Pipeline(halve);
 * await pipe.feed([2, 3, 4]);
 * assert.deepEqual(await Array.fromAsync(pipe), [1, 2]);
 * ```
 */
export interface StageOptions {
  /**
   * The stage's name, used in errors.
   * @default {the target's name}
   */
  name?: string;
  /**
   * Put no results downstream: the stage is a dead-end (the stop still passes).
   * @default {false}
   */
  disableResult?: boolean;
  /**
   * At stop, call each worker's `doTask(null)` once after its last task.
   * @default {false}
   */
  doStopTask?: boolean;
  /**
   * The most tasks that may wait at the stage's input; producers wait at `put`
   * while it is full. `Infinity` means no bound beyond the rings' size.
   * @default {Infinity}
   */
  maxBacklog?: number;
  /**
   * Arguments for the worker class's constructor (structured-cloneable). They
   * are copied when the stage is made, which throws a `TypeError` if they
   * cannot be.
   * @default {[]}
   */
  args?: unknown[];
  /**
   * What a task that throws (or rejects, returns a value that cannot be
   * cloned, or is lost with its worker) does: `"fail"` fails the pipeline
   * with a `StageError`; `"skip"` drops the task, counts it in
   * `stage.skipped`, and goes on; a function does as `"skip"` and is called
   * on the main thread with the `StageError`.
   * A function or class target that uses a name the worker lacks (an outer
   * variable) fails the pipeline whatever this says: that is a bug of the
   * program, not of a task.
   * @default {"fail"}
   */
  onError?: "fail" | "skip" | ((error: StageError) => void);
  /**
   * Replace a worker that is lost (it called `close()` or `Deno.exit()`, or
   * threw outside `doTask`) and go on. The tasks it held (the one it ran, or
   * up to `concurrency`) fail as if they threw: under `onError: "skip"` or a
   * function each is dropped, counted in `stage.skipped` and reported to the
   * function with a `StageError` of its own; under `"fail"` they fail the
   * pipeline all the same, so `restart` then replaces only a worker lost
   * before it took a task (in `doInit()`). Without it, a lost worker fails the
   * pipeline (unless its tasks are retried, see `retry`). A place whose
   * workers are lost 3 times in a row before they are ready (in `doInit()`
   * or loading the target) fails the pipeline instead.
   * @default {false}
   */
  restart?: boolean;
  /**
   * Milliseconds a task may run, from its start. A task that runs longer has
   * its worker replaced, and fails the pipeline (`onError: "fail"`) or is
   * dropped (`"skip"` or a function). A task stuck in a synchronous loop
   * goes on running in its old thread (Deno cannot stop it), but its worker
   * no longer touches the pipeline.
   * @default {Infinity}
   */
  taskTimeout?: number;
  /**
   * The most tasks one worker runs at once (a positive integer). With more
   * than 1, a worker whose task returns a promise starts further tasks while
   * earlier ones await, up to this many at a time; an ordered stage still
   * puts its results in task order. A worker takes a task from its ring
   * only for a free slot, so the rings stay the only queue. With more than 1,
   * `putResult()` works only before a task's first await.
   * @default {1}
   */
  concurrency?: number;
  /**
   * The permissions of the stage's workers: `"inherit"`, `"none"`, or an
   * object with `read`/`write`/`net`/`env`/`run`/`sys`/`ffi`/`import` fields,
   * each `"inherit"`, a boolean or a list, as Deno's `Worker` takes them;
   * fields left out are denied. A task that tries what it may not do fails
   * like any other task, its `StageError`'s cause Deno's `NotCapable` error.
   * Needs Deno's `--unstable-worker-options` flag (or `"unstable":
   * ["worker-options"]` in deno.json): where the pipeline can tell the flag
   * is missing, `new Pipeline` throws a `TypeError` before any worker starts.
   * @default {"inherit"}
   */
  permissions?: StagePermissions;
  /**
   * Run the stage on other machines: on the worker hosts of this cluster,
   * such as a `JetStreamCluster` from `@mpipe/mpipe/jetstream`. `size` is
   * then how many of its tasks may run at once across the cluster; the
   * stage's order, backpressure, stop and errors are as for a local stage.
   * A function or class target travels by its source, a module target by
   * its URL (which the hosts must be able to import). `taskTimeout` counts
   * from when a task is sent until its result is back; `concurrency` is how
   * many tasks each host worker runs at once; `doStopTask` and `restart`
   * are refused.
   * @default {null: the stage runs in this process's Web Workers}
   */
  cluster?: Cluster | null;
  /**
   * Retry a failed task: a number of attempts in all (the first try
   * included), or `{ attempts, delayMs, maxDelayMs, factor, jitter, when }`
   * (see `RetryOptions`). A task that throws, rejects or overruns
   * `taskTimeout` is tried again by its worker after the delay; one lost with
   * its worker is tried again by the worker that takes its place. An ordered
   * stage's results still leave in task order: later tasks' results wait for
   * the retried one. After the last attempt `onError` decides, with a
   * `StageError` that lists every attempt's error (`attempts`). A remote
   * stage (`cluster`) sends a task that failed on a host again, to any of
   * its hosts; a task whose host, or host worker, was lost runs again only
   * within its `crashBudget`.
   * @default {1: no retry}
   */
  retry?: number | RetryOptions;
  /**
   * How many workers (or, for a remote stage, hosts) one task may cost,
   * lost in the task, in `doInit()` while it held the task, or past
   * `taskTimeout`, before it is quarantined: failed or skipped as `onError`
   * says, and never handed to a worker again (a positive integer).
   * @default {3; for a remote stage, its cluster's (JetStream's `maxAttempts`, 3)}
   */
  crashBudget?: number;
  /**
   * For an elastic stage (`size` given as `{ min, max }`): ms a worker waits
   * for tasks before it leaves, as long as `min` workers stay. Refused with a
   * fixed `size`.
   * @default {2000}
   */
  idleMs?: number;
}

/**
 * An elastic stage's size: it runs between `min` and `max` workers, adding
 * one while tasks wait at its input and its workers are busy, and letting
 * one go once it has waited `idleMs` for tasks (see the README's "Elastic
 * stages").
 *
 * @example A stage of 0 to 4 workers
 * ```ts
 * import { type ElasticSize, Pipeline, UnorderedStage } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const size: ElasticSize = { min: 0, max: 4 };
 * const pipe = new Pipeline(new UnorderedStage((x: number) => x * 2, size));
 * await pipe.feed([1, 2, 3]);
 * const results = await Array.fromAsync(pipe);
 * assert.deepEqual(results.sort(), [2, 4, 6]);
 * ```
 */
export interface ElasticSize {
  /** The fewest workers, 0 or more: with 0, the stage starts a worker when a task arrives. */
  min: number;
  /** The most workers, a positive integer at least `min`. */
  max: number;
}

/** The default `idleMs` of an elastic stage. */
export const IDLE_MS = 2000;

/**
 * Checks a stage's `size`: a positive integer, or an `ElasticSize`. Returns
 * its most workers and, for an elastic size, its fewest.
 */
export function checkSize(
  kind: string,
  size: unknown,
): { max: number; min: number | null } {
  const count = (value: unknown, least: number) =>
    typeof value === "number" && Number.isInteger(value) && value >= least;
  if (typeof size !== "object" || size === null) {
    if (!count(size, 1)) {
      throw new RangeError(
        `${kind}: 'size' must be a positive integer or { min, max }, got ${
          describe(size)
        }`,
      );
    }
    return { max: size as number, min: null };
  }
  const { min, max } = size as Record<string, unknown>;
  for (const key of Object.keys(size)) {
    if (key !== "min" && key !== "max") {
      throw new TypeError(
        `${kind}: 'size.${key}' is not part of an elastic size; it takes min and max`,
      );
    }
  }
  if (!count(max, 1)) {
    throw new RangeError(
      `${kind}: 'size.max' must be a positive integer, got ${describe(max)}`,
    );
  }
  if (!count(min, 0) || (min as number) > (max as number)) {
    throw new RangeError(
      `${kind}: 'size.min' must be an integer from 0 to 'size.max' (${max}), got ${
        describe(min)
      }`,
    );
  }
  return { max: max as number, min: min as number };
}

/**
 * Options for reading results.
 *
 * @example Usage
 * ```ts
 * import { type GetOptions, OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline(new OrderedStage((x: number) => x));
 * const options: GetOptions = { timeout: 50 };
 * // Nothing was put: the read gives up after 50 ms, and loses nothing.
 * await assert.rejects(pipe.get(options), { name: "TimeoutError" });
 * pipe.terminate();
 * ```
 */
export interface GetOptions {
  /** Give up after this many milliseconds with a `TimeoutError` `DOMException`; nothing is lost. */
  timeout?: number;
  /** Give up when this signal aborts, with its reason; nothing is lost. */
  signal?: AbortSignal;
}

const OPTION_NAMES = [
  "name",
  "disableResult",
  "doStopTask",
  "maxBacklog",
  "args",
  "onError",
  "restart",
  "taskTimeout",
  "concurrency",
  "permissions",
  "cluster",
  "retry",
  "crashBudget",
  "idleMs",
];

/** Checks a stage's options; throws a `TypeError` or `RangeError` naming the bad one. */
export function checkStageOptions(
  kind: string,
  options: unknown,
): StageOptions {
  const o = checkObject(kind, "options", options);
  checkOptionNames(kind, o, OPTION_NAMES, "stage");
  const fail = (key: string, what: string) => {
    throw new TypeError(
      `${kind}: 'options.${key}' must be ${what}, got ${describe(o[key])}`,
    );
  };
  checkName(kind, "options.name", o.name);
  for (const key of ["disableResult", "doStopTask", "restart"]) {
    checkBoolean(kind, `options.${key}`, o[key]);
  }
  if (o.args !== undefined && !Array.isArray(o.args)) fail("args", "an array");
  if (
    o.onError !== undefined && o.onError !== "fail" && o.onError !== "skip" &&
    typeof o.onError !== "function"
  ) {
    fail("onError", '"fail", "skip" or a function');
  }
  if (o.taskTimeout !== undefined) {
    const timeout = o.taskTimeout;
    if (typeof timeout !== "number") fail("taskTimeout", "a number");
    if (!((timeout as number) > 0)) {
      throw new RangeError(
        `${kind}: 'options.taskTimeout' must be a positive number of milliseconds or Infinity, got ${
          describe(timeout)
        }`,
      );
    }
  }
  checkPositiveInteger(kind, "options.concurrency", o.concurrency);
  if (o.permissions !== undefined) checkPermissions(kind, o.permissions);
  retryPolicy(kind, o.retry);
  crashBudget(kind, o.crashBudget);
  if (o.cluster !== undefined && o.cluster !== null) {
    if (
      typeof o.cluster !== "object" ||
      typeof (o.cluster as { openRun?: unknown }).openRun !== "function"
    ) {
      fail("cluster", "a cluster (such as a JetStreamCluster) or null");
    }
    for (const key of ["doStopTask", "restart"]) {
      if (o[key] === true) {
        throw new TypeError(
          `${kind}: 'options.${key}' cannot be used with 'options.cluster': ${
            key === "restart"
              ? "a remote stage's hosts replace their lost workers themselves, and a task that loses its worker fails (retry it with the retry option, or skip it with onError)"
              : "a remote stage has no workers of its own to give a stop task to"
          }`,
        );
      }
    }
    if (o.permissions !== undefined && o.permissions !== "inherit") {
      throw new TypeError(
        `${kind}: 'options.permissions' cannot be used with 'options.cluster': a remote stage runs with the permissions of the hosts that run it (start them with only what the stage needs, see README "Scaling out")`,
      );
    }
  }
  if (o.idleMs !== undefined) {
    const ms = o.idleMs;
    if (typeof ms !== "number") fail("idleMs", "a number");
    if (!((ms as number) > 0 && Number.isFinite(ms))) {
      throw new RangeError(
        `${kind}: 'options.idleMs' must be a positive finite number of milliseconds, got ${
          describe(ms)
        }`,
      );
    }
  }
  if (o.maxBacklog !== undefined) {
    const max = o.maxBacklog;
    if (typeof max !== "number") fail("maxBacklog", "a number");
    if (
      !(max === Infinity || (Number.isInteger(max) && (max as number) >= 1))
    ) {
      throw new RangeError(
        `${kind}: 'options.maxBacklog' must be a positive integer or Infinity, got ${
          describe(max)
        }`,
      );
    }
  }
  return o as StageOptions;
}

/**
 * A copy of a worker class's constructor arguments, made when the stage is,
 * as its workers will get them: arguments that cannot be sent to a worker are
 * refused here, before any worker of any stage starts.
 */
export function cloneArgs(
  kind: string,
  stage: string,
  args: unknown[],
): unknown[] {
  try {
    return structuredClone(args);
  } catch (error) {
    throw new TypeError(
      `${kind} '${stage}': 'options.args' cannot be sent to its workers (${
        error instanceof Error ? error.message : String(error)
      }): pass only structured-cloneable values, and create anything else (a function, a connection) in the worker class's constructor or doInit()`,
      { cause: error },
    );
  }
}

/** A stage's name when none is given: its target's. */
export function defaultName(target: unknown): string {
  if (typeof target === "function" && target.name) return target.name;
  if (target instanceof URL || typeof target === "string") {
    return String(target).split("/").pop() || "stage";
  }
  if (typeof target === "object" && target !== null && "export" in target) {
    return String((target as { export: unknown }).export);
  }
  return "stage";
}
