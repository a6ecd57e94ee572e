/**
 * Rebuilds a stage's target inside its worker: a function or class from its
 * source text, or a module target by importing it. Returns the task function
 * and the `doInit` to call once.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import type { ShippedTarget } from "./target.ts";
import { OrderedWorker, TaskWorker, UnorderedWorker } from "./worker.ts";

/** What a worker runs per task. */
export type Run = (task: unknown) => unknown;

/** Makes a stage's target in its worker. */
export class TargetLoader {
  /** Loads `target`; a worker class is constructed with `args`. */
  static async load(
    target: ShippedTarget,
    ordered: boolean,
    args: unknown[],
  ): Promise<[Run, () => unknown]> {
    let made: unknown;
    if (target.kind === "source") {
      const names: string[] = [];
      const values: unknown[] = [];
      const bases = { TaskWorker, OrderedWorker, UnorderedWorker };
      if (target.binding !== "") {
        names.push(target.binding);
        values.push(
          target.namespace ? bases : ordered ? OrderedWorker : UnorderedWorker,
        );
      }
      for (const [name, base] of Object.entries(bases)) {
        if (!names.includes(name)) {
          names.push(name);
          values.push(base);
        }
      }
      made = new Function(
        ...names,
        `"use strict";\nreturn (${target.source});`,
      )(
        ...values,
      );
    } else {
      const module = await import(target.specifier);
      if (!(target.exportName in module)) {
        throw new TypeError(
          `Module ${target.specifier} has no export named '${target.exportName}': export the task function or worker class${
            target.exportName === "default" ? " as default" : ""
          }, or name the export with { module, export }`,
        );
      }
      made = module[target.exportName];
    }
    if (typeof made !== "function") {
      throw new TypeError(
        `The target is ${typeof made}, not a task function or worker class`,
      );
    }
    if (/^class\b/.test(Function.prototype.toString.call(made))) {
      const worker = new (made as new (...args: unknown[]) => {
        doTask(task: unknown): unknown;
        doInit?(): unknown;
      })(...args);
      if (typeof worker.doTask !== "function") {
        throw new TypeError(
          `The target class ${
            (made as { name: string }).name
          } has no doTask() method: extend OrderedWorker or UnorderedWorker and implement doTask()`,
        );
      }
      return [
        (task) => worker.doTask(task),
        () => worker.doInit?.(),
      ];
    }
    return [made as Run, () => undefined];
  }
}
