/**
 * Rebuilds a stage's target inside its worker: a function or class from its
 * source text, or a module target by importing it. Returns the task function
 * and the `doInit` to call once.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import type { ShippedTarget } from "../stage/target.ts";
import { OrderedWorker, TaskWorker, UnorderedWorker } from "../stage/worker.ts";

/** What a worker runs per task. */
export type Run = (task: unknown) => unknown;

/** A worker class's instance, for the runtime to look for a batch interface on. */
export type Instance = Record<symbol, unknown> | null;

/** Makes a stage's target in its worker. */
export class TargetLoader {
  /** The global symbol's key under which a worker's script preloads its module target (see `stageWorkerScript`). */
  static readonly PRELOADED = "mpipe.preloaded";

  /**
   * Globals that exist in a worker but not on the main thread, or mean
   * something else there (`name` is the worker's name, `close()` ends the
   * worker). A shipped target that uses one as if it were an outer variable
   * must fail, not run with the worker's value: each is declared, and left
   * uninitialised, around the target, so any use throws a ReferenceError.
   */
  static readonly WORKER_GLOBALS = [
    "name",
    "close",
    "self",
    "location",
    "postMessage",
    "onmessage",
    "onmessageerror",
    "onerror",
    "onunhandledrejection",
    "DedicatedWorkerGlobalScope",
    "WorkerGlobalScope",
    "WorkerLocation",
    "WorkerNavigator",
  ];

  /**
   * The name a shipped target used that does not exist in the worker, if
   * `error` says so: a name that is not defined, or a worker global shadowed
   * around the target (see `WORKER_GLOBALS`).
   */
  static missingName(error: unknown): string | null {
    if (!(error instanceof ReferenceError)) return null;
    const missing = /^(\S+) is not defined$/.exec(error.message)?.[1];
    if (missing !== undefined) return missing;
    const shadowed = /^Cannot access '(\S+)' before initialization$/.exec(
      error.message,
    )?.[1];
    return shadowed !== undefined &&
        TargetLoader.WORKER_GLOBALS.includes(shadowed)
      ? shadowed
      : null;
  }

  /**
   * Whether `error` is a name the shipped target's own code used that does
   * not exist in the worker: a bug in the program, not a task's, so it fails
   * the stage whatever its `onError`. Its first frame must be in the target's
   * source: code the target evaluates (`eval`, `Function`) may fail so on a
   * task's input, and a global the target calls may throw its own.
   */
  static isOwnMissingName(error: unknown): boolean {
    if (TargetLoader.missingName(error) === null) return false;
    const stack = (error as Error).stack;
    const frame = typeof stack === "string"
      ? /^\s+at .*$/m.exec(stack)?.[0]
      : undefined;
    return frame !== undefined &&
      /^\s+at (?:[^(]* \()?mpipe:stage\//.test(frame);
  }

  /**
   * Loads `target`; a worker class is constructed with `args`. Returns the
   * task function, the `doInit` to call once, and the class's instance
   * (null for a function).
   */
  static async load(
    stage: string,
    target: ShippedTarget,
    ordered: boolean,
    args: unknown[],
  ): Promise<[Run, () => unknown, Instance]> {
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
      made = TargetLoader.#evaluate(stage, target.source, names)(...values);
    } else {
      // A sandboxed worker's script imported its module target already.
      const module = (globalThis as Record<symbol, unknown>)[
        Symbol.for(TargetLoader.PRELOADED)
      ] as Record<string, unknown> | undefined ??
        await import(target.specifier);
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
        worker as unknown as Instance,
      ];
    }
    return [made as Run, () => undefined, null];
  }

  /**
   * Evaluates a shipped target's source as a function of `names`, with the
   * worker globals shadowed. The source starts on the script's first line, so
   * a stack trace's line numbers count from the target's first line, in a
   * script named after the stage and the target.
   */
  static #evaluate(
    stage: string,
    source: string,
    names: string[],
  ): (...values: unknown[]) => unknown {
    const shadowed = TargetLoader.WORKER_GLOBALS.join(", ");
    const name = /^(?:async\s+)?(?:function\*?|class)\s+([\w$]+)/.exec(source)
      ?.[1] ?? "target";
    const url = `mpipe:stage/${encodeURIComponent(stage)}/${name}.js`;
    // An indirect eval runs in the global scope, like `new Function`.
    return (0, eval)(
      `(function (${
        names.join(", ")
      }) { "use strict"; return (${source}\n); let ${shadowed}; })\n//# sourceURL=${url}`,
    );
  }
}
