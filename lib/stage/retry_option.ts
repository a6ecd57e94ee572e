/**
 * A stage's `retry` and `crashBudget` options: their type, their checks and
 * their defaults. The workers get the policy as `RetryConfig` (with `when`
 * by its source) and apply it themselves (`worker_thread/retries.ts`).
 *
 * @module
 */

import { checkOptionNames, checkPositiveInteger, describe } from "../checks.ts";

/**
 * How a stage retries a failed task (the stage option `retry`). A number
 * is short for `{ attempts }`.
 *
 * @example Three attempts, 50 ms then 100 ms apart, for network errors only
 * ```ts
 * import { OrderedStage, Pipeline, type RetryOptions } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const retry: RetryOptions = {
 *   attempts: 3,
 *   delayMs: 50,
 *   jitter: 0,
 *   when: (error) => error instanceof TypeError,
 * };
 * const pipe = new Pipeline(new OrderedStage((x: number) => x * 2, 1, { retry }));
 * await pipe.feed([1, 2, 3]);
 * assert.deepEqual(await Array.fromAsync(pipe), [2, 4, 6]);
 * ```
 */
export interface RetryOptions {
  /**
   * How many times a task is tried in all, the first try included (a
   * positive integer). 1 never retries.
   * @default {1}
   */
  attempts?: number;
  /**
   * Milliseconds before the first retry (0 or more).
   * @default {100}
   */
  delayMs?: number;
  /**
   * The longest delay before a retry (at least `delayMs`; may be Infinity).
   * @default {10000}
   */
  maxDelayMs?: number;
  /**
   * Each retry waits `factor` times as long as the one before (1 or more).
   * @default {2}
   */
  factor?: number;
  /**
   * Randomizes each delay by up to this fraction of it, either way (0 to 1),
   * so that tasks that failed together do not retry together.
   * @default {0.2}
   */
  jitter?: number;
  /**
   * Which failures are retried: called with the attempt's error and the
   * attempt's number (1 for the first try); a truthy answer, given at once
   * (an async function or a generator is refused), retries. It runs
   * in the stage's workers, shipped by its source like a function target
   * (so it may use only globals and its parameters), and on the main thread
   * for a worker that was lost, whose error is a `StageError`. For a remote
   * stage it runs in the stage's stand-in worker on this machine, with the
   * error as thrown on the host. A `when` that throws ends the retries: what
   * it threw is that attempt's error.
   * @default {every failure: a throw, a rejection, a taskTimeout, a lost worker}
   */
  when?: (error: unknown, attempt: number) => boolean;
}

/** A stage's retry policy, as its workers get it. */
export interface RetryConfig {
  attempts: number;
  delayMs: number;
  maxDelayMs: number;
  factor: number;
  jitter: number;
  /** The source of `when` (an expression), or null to retry every failure. */
  when: string | null;
}

/** The default of the `crashBudget` stage option (for a remote stage: its cluster's, such as JetStream's `maxAttempts`). */
export const DEFAULT_CRASH_BUDGET = 3;

/**
 * A stage's retry policy from its `retry` option (checked): the workers'
 * config, and `when` itself for the main thread. Throws a `TypeError` or
 * `RangeError` naming the option and its value.
 */
export function retryPolicy(
  kind: string,
  option: unknown,
): {
  config: RetryConfig;
  when: ((error: unknown, attempt: number) => boolean) | null;
} {
  const o: Record<string, unknown> = typeof option === "number"
    ? { attempts: option }
    : option === undefined
    ? {}
    : typeof option === "object" && option !== null && !Array.isArray(option)
    ? option as Record<string, unknown>
    : {};
  if (typeof option !== "number" && o !== option && option !== undefined) {
    throw new TypeError(
      `${kind}: 'options.retry' must be a number of attempts or an object { attempts, delayMs, maxDelayMs, factor, jitter, when }, got ${
        describe(option)
      }`,
    );
  }
  checkOptionNames(
    kind,
    o,
    ["attempts", "delayMs", "maxDelayMs", "factor", "jitter", "when"],
    "retry",
    "options.retry",
  );
  const where = (key: string) =>
    typeof option === "number" ? "'options.retry'" : `'options.retry.${key}'`;
  const number = (
    key: string,
    fallback: number,
    ok: (n: number) => boolean,
    what: string,
  ): number => {
    const value = o[key];
    if (value === undefined) return fallback;
    if (typeof value !== "number") {
      throw new TypeError(
        `${kind}: ${where(key)} must be a number, got ${describe(value)}`,
      );
    }
    if (!ok(value)) {
      throw new RangeError(
        `${kind}: ${where(key)} must be ${what}, got ${describe(value)}`,
      );
    }
    return value;
  };
  const attempts = number(
    "attempts",
    1,
    (n) => Number.isInteger(n) && n >= 1,
    "a positive integer (the tries in all, the first included)",
  );
  const delayMs = number(
    "delayMs",
    100,
    (n) => Number.isFinite(n) && n >= 0,
    "a finite number of milliseconds, 0 or more",
  );
  const maxDelayMs = number(
    "maxDelayMs",
    Math.max(10_000, delayMs),
    (n) => n >= delayMs,
    `a number of milliseconds at least delayMs (${delayMs}), or Infinity`,
  );
  const factor = number(
    "factor",
    2,
    (n) => Number.isFinite(n) && n >= 1,
    "a finite number, 1 or more",
  );
  const jitter = number(
    "jitter",
    0.2,
    (n) => n >= 0 && n <= 1,
    "a fraction from 0 to 1",
  );
  const when = o.when;
  if (when !== undefined && typeof when !== "function") {
    throw new TypeError(
      `${kind}: 'options.retry.when' must be a function (error, attempt) => boolean, got ${
        describe(when)
      }`,
    );
  }
  let source: string | null = null;
  if (typeof when === "function") {
    source = Function.prototype.toString.call(when);
    if (
      /\{\s*\[native code\]\s*\}\s*$/.test(source) || /^class\b/.test(source)
    ) {
      throw new TypeError(
        `${kind}: 'options.retry.when' must be a plain function, shipped to the workers by its source, got ${
          describe(when)
        }`,
      );
    }
    // Its answer is read at once: a promise would always retry.
    if (/^async\b/.test(source) || when.constructor.name !== "Function") {
      throw new TypeError(
        `${kind}: 'options.retry.when' must answer at once, not be an async function or a generator (its promise would always be truthy), got ${
          describe(when)
        }`,
      );
    }
    // Method shorthand (`{ when(e) {} }`) is not an expression on its own.
    if (!/^(function\b|\(|[\w$]+\s*=>)/.test(source)) {
      source = "function " + source;
    }
  }
  return {
    config: { attempts, delayMs, maxDelayMs, factor, jitter, when: source },
    when: (when as (error: unknown, attempt: number) => boolean) ?? null,
  };
}

/** Checks the `crashBudget` stage option; returns it or its default. */
export function crashBudget(kind: string, value: unknown): number | undefined {
  checkPositiveInteger(kind, "options.crashBudget", value);
  return value as number | undefined;
}

/** The retry settings of a stage's internals, from its checked options. */
export function retrySettings(
  kind: string,
  options: { retry?: unknown; crashBudget?: unknown },
): {
  retry: RetryConfig;
  retryWhen: ((error: unknown, attempt: number) => boolean) | null;
  crashBudget: number | undefined;
} {
  const { config, when } = retryPolicy(kind, options.retry);
  return {
    retry: config,
    retryWhen: when,
    crashBudget: crashBudget(kind, options.crashBudget),
  };
}
