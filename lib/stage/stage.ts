/**
 * Stages: groups of identical workers, linked into chains, forks and joins.
 *
 * @module
 */

import { reaches } from "./graph.ts";
import {
  type AnyStage,
  internalsOf,
  setInternals,
  type StageOwner,
} from "./internals.ts";
import {
  checkSize,
  checkStageOptions,
  cloneArgs,
  defaultName,
  type ElasticSize,
  type GetOptions,
  IDLE_MS,
  type StageOptions,
} from "./stage_options.ts";
import { describe } from "../checks.ts";
import { shipTarget } from "./target.ts";
import { retrySettings } from "./retry_option.ts";
import type {
  ModuleTarget,
  Target,
  TaskFunction,
  WorkerClass,
} from "./target.ts";

/**
 * A stage of identical workers running a worker class: ordered if the class
 * extends `OrderedWorker`, unordered if it extends `UnorderedWorker`. Use
 * `OrderedStage` or `UnorderedStage` for task functions.
 *
 * @typeParam I The type of the stage's tasks.
 * @typeParam O The type of the stage's results.
 * @typeParam R The type of the results of the leaf stages linked below this
 * one by `link()` calls, as far as the types show them (`never` for none:
 * then the stage's own results are the pipeline's). A pipeline whose root is
 * this stage takes tasks of type `I` and gives results of type `R`, or `O`.
 *
 * @example A stage of four ordered workers
 * ```ts
 * import { OrderedWorker, Pipeline, Stage } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * class Doubler extends OrderedWorker<number, number> {
 *   doTask(task: number) {
 *     return task * 2;
 *   }
 * }
 * const pipe = new Pipeline<number, number>(new Stage(Doubler, 4));
 * for (let i = 0; i < 10; i++) pipe.put(i);
 * pipe.put(null);
 * assert.deepEqual(await Array.fromAsync(pipe), [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
 * ```
 */
export class Stage<I, O, R = never> {
  /**
   * Type-level only, no value: makes the task type part of the stage's type,
   * so that `link` and `Pipeline` check it.
   * @ignore
   */
  declare readonly taskType?: (task: I) => void;
  /**
   * Type-level only, no value: the results a pipeline rooted here gives.
   * @ignore
   */
  declare readonly resultType?: [R] extends [never] ? O : R;
  /** The stage's name, used in errors. */
  readonly name: string;
  /** The number of workers; for an elastic stage, the most (`max`). */
  readonly size: number;
  /** The fewest workers: `size` for a fixed stage, `min` for an elastic one. */
  readonly minSize: number;

  /**
   * Creates a stage of `size` workers running `target`.
   *
   * @param target A self-contained worker class, or a module target whose export is one.
   * @param size The number of workers, a positive integer, or `{ min, max }`
   * for an elastic stage (see `ElasticSize`).
   * @param options The stage's options.
   * @throws {TypeError} If `target` cannot be shipped to a worker, or an
   * option is unknown or of the wrong type.
   * @throws {RangeError} If `size` is not a positive integer or `{ min, max }`
   * with 0 <= min <= max and max >= 1, or an option is out of range.
   */
  constructor(
    target: WorkerClass<I, O> | ModuleTarget,
    size: number | ElasticSize = 1,
    options: StageOptions = {},
  ) {
    const kind = new.target === Stage ? "Stage" : new.target.name;
    const { max, min } = checkSize(kind, size);
    const checked = checkStageOptions(kind, options);
    if (min === null && checked.idleMs !== undefined) {
      throw new TypeError(
        `${kind}: 'options.idleMs' applies only to an elastic stage: give 'size' as { min, max }, or leave idleMs out`,
      );
    }
    if (min !== null && checked.cluster) {
      throw new TypeError(
        `${kind}: a remote stage ('options.cluster') cannot be elastic: its hosts keep pools of their own; give 'size' as a number (the tasks it runs at once)`,
      );
    }
    const { shipped, ordered, isClass } = shipTarget(target, kind);
    const classOnly = !(this instanceof OrderedStage ||
      this instanceof UnorderedStage);
    if (classOnly && shipped.kind === "source" && !isClass) {
      throw new TypeError(
        `Stage: 'target' must be a worker class (extending OrderedWorker or UnorderedWorker), got ${
          describe(target)
        }: use OrderedStage or UnorderedStage for a task function`,
      );
    }
    this.size = max;
    this.minSize = min ?? max;
    this.name = checked.name ?? defaultName(target);
    setInternals(this, {
      shipped,
      ordered: this instanceof OrderedStage
        ? true
        : this instanceof UnorderedStage
        ? false
        : ordered,
      classOnly,
      disableResult: checked.disableResult ?? false,
      doStopTask: checked.doStopTask ?? false,
      maxBacklog: checked.maxBacklog ?? Infinity,
      args: cloneArgs(kind, this.name, checked.args ?? []),
      onError: checked.onError ?? "fail",
      restart: checked.restart ?? false,
      taskTimeout: checked.taskTimeout ?? Infinity,
      elastic: min === null ? null : { min, idleMs: checked.idleMs ?? IDLE_MS },
      concurrency: checked.concurrency ?? 1,
      ...retrySettings(kind, checked),
      permissions: checked.permissions ?? "inherit",
      cluster: checked.cluster ?? null,
      standIn: null,
      hosts: [],
      status: null,
      next: [],
      previous: [],
      owner: null,
      filter: null,
    });
  }

  /** Tasks this stage has dropped: by its `onError` policy, past `taskTimeout`, or held by a lost worker. */
  get skipped(): number {
    const status = internalsOf(this).status;
    return status === null ? 0 : status.skipped;
  }

  /** Whether the stage keeps the order of its tasks (undefined until a module target is loaded). */
  get ordered(): boolean | undefined {
    return internalsOf(this).ordered;
  }

  /**
   * Links this stage's output to `next`'s input and returns this stage. A stage
   * may link to several (a fork) and be linked from several (a join).
   *
   * @typeParam N The next stage's type: its tasks must be this stage's results.
   * @param next The stage that takes this stage's results as its tasks.
   * @returns This stage, typed with the results of the leaves below `next`
   * added to those below it (so that a chain written as
   * `a.link(b.link(c))`, or a fork as `a.link(b).link(c)`, types the
   * pipeline's results).
   * @throws {TypeError} If `next` is not a stage, is this stage, would make a
   * cycle, or either stage already belongs to a pipeline.
   */
  // A stage whose results are typed `unknown` may link to any stage.
  link<N extends Stage<unknown extends O ? never : O, unknown, unknown>>(
    next: N,
  ): Stage<I, O, R | NonNullable<N["resultType"]>> {
    if (!(next instanceof Stage)) {
      throw new TypeError(
        `Stage '${this.name}': 'next' must be a Stage, got ${describe(next)}`,
      );
    }
    const other: AnyStage = next;
    const mine = internalsOf(this);
    const theirs = internalsOf(other);
    if (mine.owner !== null || theirs.owner !== null) {
      throw new TypeError(
        `Stage '${this.name}' cannot be linked to stage '${next.name}': ${
          mine.owner !== null ? this.name : next.name
        } already belongs to a built pipeline; link stages before creating the Pipeline`,
      );
    }
    if (other === this as AnyStage) {
      throw new TypeError(
        `Stage '${this.name}' cannot be linked to itself`,
      );
    }
    if (reaches(other, this)) {
      throw new TypeError(
        `Linking stage '${this.name}' to stage '${next.name}' would make a cycle: '${next.name}' already leads to '${this.name}'`,
      );
    }
    if (!mine.next.includes(other)) {
      mine.next.push(other);
      theirs.previous.push(this);
    }
    return this;
  }

  /**
   * Reads the next result of this (leaf) stage alone: `null` once it has
   * stopped and every result was read.
   *
   * @param options A timeout or an `AbortSignal`; giving up loses nothing.
   * @returns A Promise of the next result, or of `null` at the end; it
   * rejects as `Pipeline.get` does.
   * @throws {TypeError} If the stage belongs to no pipeline, or is not a leaf.
   */
  get(options?: GetOptions): Promise<O | null> {
    return this.#owner().getFrom(
      this,
      options,
    ) as Promise<O | null>;
  }

  /**
   * Iterates over the results of this (leaf) stage alone, until it has stopped.
   *
   * @param options A timeout for each result, or an `AbortSignal`.
   * @returns An async iterator of the stage's results.
   * @throws {TypeError} If the stage belongs to no pipeline, or is not a leaf.
   */
  results(options?: GetOptions): AsyncIterableIterator<O> {
    return this.#owner().resultsFrom(
      this,
      options,
    ) as AsyncIterableIterator<O>;
  }

  #owner(): StageOwner {
    const owner = internalsOf(this).owner;
    if (owner === null) {
      throw new TypeError(
        `Stage '${this.name}' has no results to read: create a Pipeline with it first`,
      );
    }
    return owner;
  }
}

/**
 * A stage whose results leave in the order of its tasks: all results of task k
 * before any of task k + 1, however uneven the tasks' times.
 *
 * @typeParam I The type of the stage's tasks.
 * @typeParam O The type of the stage's results.
 *
 * @example Three workers, results in order
 * ```ts
 * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline<number, number>(
 *   new OrderedStage((x: number) => x + 1, 3),
 * );
 * for (let i = 0; i < 5; i++) pipe.put(i);
 * pipe.put(null);
 * assert.deepEqual(await Array.fromAsync(pipe), [1, 2, 3, 4, 5]);
 * ```
 */
export class OrderedStage<I, O> extends Stage<I, O> {
  /**
   * Creates an ordered stage of `size` workers running `target`.
   *
   * @param target A self-contained task function or worker class, or a module target.
   * @param size The number of workers, a positive integer, or `{ min, max }`
   * for an elastic stage (see `ElasticSize`).
   * @param options The stage's options.
   * @throws {TypeError} If `target` cannot be shipped to a worker, or an
   * option is unknown or of the wrong type.
   * @throws {RangeError} If `size` is not a positive integer or `{ min, max }`
   * with 0 <= min <= max and max >= 1, or an option is out of range.
   */
  constructor(
    target: Target<I, O>,
    size: number | ElasticSize = 1,
    options: StageOptions = {},
  ) {
    super(target as WorkerClass<I, O>, size, options);
  }
}

/**
 * A stage whose results leave as soon as they are ready, in any order.
 *
 * @typeParam I The type of the stage's tasks.
 * @typeParam O The type of the stage's results.
 *
 * @example Two workers, results in any order
 * ```ts
 * import { Pipeline, UnorderedStage } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline<number, number>(
 *   new UnorderedStage((x: number) => x * x, 2),
 * );
 * for (let i = 0; i < 4; i++) pipe.put(i);
 * pipe.put(null);
 * const results = await Array.fromAsync(pipe);
 * assert.deepEqual(results.sort((a, b) => a - b), [0, 1, 4, 9]);
 * ```
 */
export class UnorderedStage<I, O> extends Stage<I, O> {
  /**
   * Creates an unordered stage of `size` workers running `target`.
   *
   * @param target A self-contained task function or worker class, or a module target.
   * @param size The number of workers, a positive integer, or `{ min, max }`
   * for an elastic stage (see `ElasticSize`).
   * @param options The stage's options.
   * @throws {TypeError} If `target` cannot be shipped to a worker, or an
   * option is unknown or of the wrong type.
   * @throws {RangeError} If `size` is not a positive integer or `{ min, max }`
   * with 0 <= min <= max and max >= 1, or an option is out of range.
   */
  constructor(
    target: Target<I, O>,
    size: number | ElasticSize = 1,
    options: StageOptions = {},
  ) {
    super(target as WorkerClass<I, O>, size, options);
  }
}

/** Re-exported here so stage users find the target and option types beside the stages. */
export type {
  ElasticSize,
  GetOptions,
  ModuleTarget,
  StageOptions,
  Target,
  TaskFunction,
  WorkerClass,
};
