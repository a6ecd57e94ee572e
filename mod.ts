/**
 * MPipe for Deno: multi-stage, multi-worker pipelines on Web Workers, linked
 * by lock-free SharedArrayBuffer rings.
 *
 * Define workers (a self-contained function, or a class extending
 * `OrderedWorker` or `UnorderedWorker`), group identical workers into stages,
 * link the stages into chains and forks, and operate a `Pipeline` with `put`,
 * `get` and `results()`. Putting `null` is the stop request: it drains every
 * stage and ends every worker.
 *
 * @example The cookbook
 * ```ts
 * import { OrderedStage, OrderedWorker, Pipeline, Stage } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * function increment(task: number) {
 *   return task + 1;
 * }
 * class Doubler extends OrderedWorker<number, number> {
 *   doTask(task: number) {
 *     this.putResult(task * 2);
 *   }
 * }
 * const stage1 = new OrderedStage(increment, 3);
 * const stage2 = new Stage(Doubler, 4);
 * stage1.link(stage2);
 * const pipe = new Pipeline<number, number>(stage1);
 * for (let i = 0; i < 10; i++) pipe.put(i);
 * pipe.put(null);
 * const results = [];
 * for await (const result of pipe.results()) results.push(result);
 * assert.deepEqual(results, [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]);
 * ```
 *
 * @module
 */

export {
  ArenaFullError,
  PipelineClosedError,
  StageError,
} from "./lib/errors.ts";
export type { StageErrorOptions } from "./lib/errors.ts";
export { FilterStage } from "./lib/stage/filter.ts";
export type { FilterStageOptions } from "./lib/stage/filter.ts";
export { Pipeline } from "./lib/pipeline.ts";
export type {
  FeedOptions,
  GetOptions,
  PipelineOptions,
  ProgressOptions,
  PutOptions,
} from "./lib/pipeline.ts";
export type {
  Cluster,
  ClusterRun,
  RemoteStage,
  RemoteTarget,
} from "./lib/stage/cluster.ts";
export { OrderedStage, Stage, UnorderedStage } from "./lib/stage/stage.ts";
export type {
  ElasticSize,
  ModuleTarget,
  StageOptions,
  Target,
  TaskFunction,
  WorkerClass,
} from "./lib/stage/stage.ts";
export type { ArenaStats } from "./lib/main_thread/arena_access.ts";
export type {
  PipelineStats,
  Resize,
  RunEnd,
  SlowTask,
  StageStats,
  TaskAttempts,
  TaskDurations,
  WorkerStats,
} from "./lib/features/stats.ts";
export {
  OrderedWorker,
  TaskWorker,
  UnorderedWorker,
} from "./lib/stage/worker.ts";
export type {
  PermissionValue,
  StagePermissions,
} from "./lib/stage/permissions.ts";
export type { RetryOptions } from "./lib/stage/retry_option.ts";
