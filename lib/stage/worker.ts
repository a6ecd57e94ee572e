/**
 * The worker classes users extend. The same classes are shipped to the stage
 * workers by source, so they refer only to globals.
 *
 * @module
 */

/**
 * The base of `OrderedWorker` and `UnorderedWorker`: a worker that takes tasks
 * of type `I` and puts results of type `O`.
 *
 * @typeParam I The type of the tasks.
 * @typeParam O The type of the results.
 *
 * @example Count the words of each task
 * ```ts
 * import { Pipeline, Stage, UnorderedWorker } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * class Words extends UnorderedWorker<string, number> {
 *   doTask(task: string) {
 *     return task.split(" ").length;
 *   }
 * }
 * const pipe = new Pipeline<string, number>(new Stage(Words));
 * pipe.put("a b c");
 * pipe.put(null);
 * assert.deepEqual(await Array.fromAsync(pipe), [3]);
 * ```
 */
export abstract class TaskWorker<I, O> {
  /** Whether stages of this worker class keep the order of their tasks. */
  static readonly ordered: boolean = false;

  /**
   * Does one task. Return a result, or nothing (`null`/`undefined`) to put no
   * result; results may also be put with `putResult`. At stop, a stage with the
   * `doStopTask` option calls it once with `null`.
   */
  abstract doTask(
    task: I,
  ): O | null | undefined | void | Promise<O | null | undefined | void>;

  /** Runs once in the worker before its first task; override to set up state. */
  doInit(): void | Promise<void> {}

  /**
   * Puts a result of the current task downstream; may be called any number of
   * times while `doTask` runs. Throws outside a stage worker.
   */
  putResult(result: O): void {
    const sink = (globalThis as Record<symbol, unknown>)[
      Symbol.for("mpipe.putResult")
    ] as ((result: unknown) => void) | undefined;
    if (sink === undefined) {
      throw new Error(
        "putResult() was called outside a stage worker: call it from doTask() while a pipeline runs the worker",
      );
    }
    sink(result);
  }

  /**
   * A buffer of `n` bytes on the pipeline's arena, for a result: put it (in
   * a result) and it travels by reference, not copied. Unless it is put, it
   * goes back when the task ends. It never waits: when the arena has no
   * room it returns an ordinary `Uint8Array`, which is copied like any other
   * (a worker that waited for room held by stages that wait too could wait
   * for ever). Call it in `doTask`, before any `await` in a stage with
   * `concurrency` above 1. See `Pipeline.alloc` for who owns what.
   *
   * @example Make a result on the arena
   * ```ts
   * import { OrderedWorker, Pipeline, Stage } from "@mpipe/mpipe";
   * import assert from "node:assert/strict";
   *
   * class Expand extends OrderedWorker<number, Uint8Array> {
   *   doTask(n: number) {
   *     const bytes = this.alloc(n);
   *     bytes.fill(1);
   *     return bytes;
   *   }
   * }
   * const pipe = new Pipeline<number, Uint8Array>(new Stage(Expand));
   * pipe.put(1000);
   * pipe.put(null);
   * const [bytes] = await Array.fromAsync(pipe);
   * assert.equal(bytes!.length, 1000);
   * pipe.free(bytes!);
   * ```
   */
  alloc(n: number): Uint8Array {
    const alloc = (globalThis as Record<symbol, unknown>)[
      Symbol.for("mpipe.alloc")
    ] as ((n: number) => Uint8Array) | undefined;
    if (alloc === undefined) {
      throw new Error(
        "alloc() was called outside a stage worker: call it from doTask() while a pipeline runs the worker",
      );
    }
    return alloc(n);
  }
}

/**
 * A worker whose stage keeps the order of tasks: all results of task k leave
 * the stage before any result of task k + 1.
 *
 * @typeParam I The type of the tasks.
 * @typeParam O The type of the results.
 *
 * @example Double each task, in order
 * ```ts
 * import { OrderedWorker, Pipeline, Stage } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * class Doubler extends OrderedWorker<number, number> {
 *   doTask(task: number) {
 *     this.putResult(task * 2);
 *   }
 * }
 * const pipe = new Pipeline<number, number>(new Stage(Doubler, 2));
 * for (let i = 0; i < 5; i++) pipe.put(i);
 * pipe.put(null);
 * assert.deepEqual(await Array.fromAsync(pipe), [0, 2, 4, 6, 8]);
 * ```
 */
export abstract class OrderedWorker<I, O> extends TaskWorker<I, O> {
  /** Stages of ordered workers keep the order of their tasks. */
  static override readonly ordered: boolean = true;
}

/**
 * A worker whose stage puts results as soon as they are ready, in any order.
 *
 * @typeParam I The type of the tasks.
 * @typeParam O The type of the results.
 *
 * @example Square each task, in any order
 * ```ts
 * import { Pipeline, Stage, UnorderedWorker } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * class Square extends UnorderedWorker<number, number> {
 *   doTask(task: number) {
 *     return task * task;
 *   }
 * }
 * const pipe = new Pipeline<number, number>(new Stage(Square, 2));
 * for (let i = 0; i < 4; i++) pipe.put(i);
 * pipe.put(null);
 * const results = await Array.fromAsync(pipe);
 * assert.deepEqual(results.sort((a, b) => a - b), [0, 1, 4, 9]);
 * ```
 */
export abstract class UnorderedWorker<I, O> extends TaskWorker<I, O> {
  /** Stages of unordered workers put results as soon as they are ready. */
  static override readonly ordered: boolean = false;
}
