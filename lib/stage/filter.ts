/**
 * FilterStage: load shedding in front of slow stages.
 *
 * The filter is a one-worker ordered stage. Each stage it wraps is the root
 * of a sub-pipeline whose only producer is the filter's worker and whose
 * leaves write back to it, through the same rings as every other link. The
 * logic that runs in the filter's worker is in `filter_runtime.ts`.
 *
 * @module
 */

import { OrderedStage, Stage } from "./stage.ts";
import { internalsOf } from "./internals.ts";
import {
  checkBoolean,
  checkName,
  checkObject,
  checkOptionNames,
  checkPositiveInteger,
  describe,
} from "../checks.ts";

/**
 * Options of a `FilterStage`.
 *
 * @example Usage
 * ```ts
 * import {
 *   FilterStage,
 *   type FilterStageOptions,
 *   OrderedStage,
 *   Pipeline,
 * } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const options: FilterStageOptions = { maxTasks: 4, dropResults: true };
 * const filter = new FilterStage([new OrderedStage((x: number) => x)], options);
 * const pipe = new Pipeline(filter);
 * await pipe.feed([1, 2, 3]);
 * assert.equal((await Array.fromAsync(pipe)).length <= 3, true);
 * ```
 */
export interface FilterStageOptions {
  /**
   * A task enters a sub-pipeline only while it holds fewer than this many
   * tasks (tasks put in, less results read out); others are shed.
   * @default {1}
   */
  maxTasks?: number;
  /**
   * Put just the task as the filter's result, not `[task, results]`.
   * @default {false}
   */
  dropResults?: boolean;
  /**
   * For a sub-pipeline that produced nothing new since the previous task,
   * repeat the last result it ever produced.
   * @default {false}
   */
  cacheResults?: boolean;
  /**
   * At the stop request, let every sub-pipeline finish the tasks it holds
   * before the stop moves downstream; without it the stop moves on first and
   * the sub-pipelines finish behind it. Either way `done` waits for them.
   * @default {true}
   */
  doStopTask?: boolean;
  /**
   * The stage's name, used in errors.
   * @default {"filter"}
   */
  name?: string;
}

const OPTION_NAMES = [
  "maxTasks",
  "dropResults",
  "cacheResults",
  "doStopTask",
  "name",
];

/**
 * A stage that passes each task into every sub-pipeline that holds fewer than
 * `maxTasks` tasks, sheds it from the others, and for every task — shed or
 * not — puts one result: `[task, results]`, where `results` holds the latest
 * result read from each sub-pipeline since the previous task (or, with
 * `cacheResults`, its last result ever), or just `task` with `dropResults`.
 *
 * @typeParam I The type of the tasks.
 * @typeParam R The type of the sub-pipelines' results.
 * @typeParam O The type of the filter's results: `[task, results]`, or `I` with `dropResults`.
 *
 * @example A slow stage behind a filter never backs up the stream
 * ```ts
 * import { FilterStage, OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const slow = new OrderedStage(async (x: number) => {
 *   await new Promise((resolve) => setTimeout(resolve, 20));
 *   return x * 10;
 * });
 * const pipe = new Pipeline<number, [number, number[]]>(
 *   new FilterStage<number, number>([slow], { maxTasks: 1 }),
 * );
 * for (let i = 0; i < 5; i++) pipe.put(i);
 * pipe.put(null);
 * const results = await Array.fromAsync(pipe);
 * assert.deepEqual(results.map(([task]) => task), [0, 1, 2, 3, 4]);
 * ```
 */
export class FilterStage<I, R = unknown, O = [task: I, results: R[]]>
  extends OrderedStage<I, O> {
  /**
   * Creates a filter in front of `stages`, each the root of a sub-pipeline.
   *
   * @param stages The stage, or stages, to filter tasks into.
   * @param options The filter's options.
   * @throws {TypeError} If `stages` is empty or holds something else than a
   * stage that roots no other pipeline, or an option is unknown.
   * @throws {RangeError} If `maxTasks` is not a positive integer.
   */
  constructor(
    stages: Stage<I, R> | Stage<I, R>[],
    options: FilterStageOptions = {},
  ) {
    const checked = checkFilterOptions(options);
    super(
      function filter(task: I) {
        return task as unknown as O;
      },
      1,
      { name: checked.name ?? "filter" },
    );
    const subs = (Array.isArray(stages) ? stages : [stages]) as unknown[];
    if (subs.length === 0) {
      throw new TypeError(
        "FilterStage: 'stages' must hold at least one stage, got an empty array",
      );
    }
    for (const sub of subs) {
      if (!(sub instanceof Stage)) {
        throw new TypeError(
          `FilterStage: 'stages' must hold Stages, got ${describe(sub)}`,
        );
      }
      const state = internalsOf(sub);
      if (state.previous.length > 0 || state.owner !== null) {
        throw new TypeError(
          `FilterStage: stage '${sub.name}' is linked from another stage or belongs to a pipeline: each filtered stage must be the root of its own sub-pipeline`,
        );
      }
    }
    internalsOf(this as unknown as Stage<never, unknown>).filter = {
      stages: subs as Stage<never, unknown>[],
      maxTasks: checked.maxTasks ?? 1,
      dropResults: checked.dropResults ?? false,
      cacheResults: checked.cacheResults ?? false,
      doStopTask: checked.doStopTask ?? true,
    };
  }
}

function checkFilterOptions(options: unknown): FilterStageOptions {
  const o = checkObject("FilterStage", "options", options);
  checkOptionNames("FilterStage", o, OPTION_NAMES, "filter");
  for (const key of ["dropResults", "cacheResults", "doStopTask"]) {
    checkBoolean("FilterStage", `options.${key}`, o[key]);
  }
  checkName("FilterStage", "options.name", o.name);
  checkPositiveInteger("FilterStage", "options.maxTasks", o.maxTasks);
  return o as FilterStageOptions;
}
