/**
 * Targets: what a stage's workers run, and how it reaches them.
 *
 * A function or worker class is shipped by its source text and rebuilt in the
 * worker, so it must be self-contained; a module target is imported by the
 * worker, so it may import anything.
 *
 * @module
 */

import { describe } from "../checks.ts";
import { OrderedWorker, TaskWorker, UnorderedWorker } from "./worker.ts";

/**
 * A task function: takes a task and returns its result, or nothing
 * (`null`/`undefined`) for no result, or a Promise of either.
 *
 * @typeParam I The type of the tasks.
 * @typeParam O The type of the results.
 *
 * @example Usage
 * ```ts
 * import { OrderedStage, type TaskFunction } from "@mpipe/mpipe";
 *
 * const parse: TaskFunction<string, number> = (line) => Number(line);
 * const stage = new OrderedStage(parse, 2);
 * ```
 */
export type TaskFunction<I, O> = (
  task: I,
) => O | null | undefined | void | Promise<O | null | undefined | void>;

/**
 * A worker class: a subclass of `OrderedWorker` or `UnorderedWorker`.
 *
 * @typeParam I The type of the tasks.
 * @typeParam O The type of the results.
 *
 * @example Usage
 * ```ts
 * import { OrderedWorker, Stage, type WorkerClass } from "@mpipe/mpipe";
 *
 * class Sum extends OrderedWorker<number, number> {
 *   total = 0;
 *   doTask(x: number): number {
 *     return this.total += x;
 *   }
 * }
 * const worker: WorkerClass<number, number> = Sum;
 * const stage = new Stage(worker);
 * ```
 */
export type WorkerClass<I, O> = abstract new (
  ...args: never[]
) => TaskWorker<I, O>;

/**
 * A module target: a `URL` or specifier of a module whose default export is
 * the task function or worker class, or `{ module, export }` for a named export.
 * Relative string specifiers are resolved against the current directory.
 *
 * @example Usage
 * ```ts
 * import { type ModuleTarget, Stage } from "@mpipe/mpipe";
 *
 * // The default export of ./score.ts, or one of its named exports.
 * const byDefault: ModuleTarget = new URL("./score.ts", import.meta.url);
 * const named: ModuleTarget = { module: "./score.ts", export: "Scorer" };
 * const stage = (target: ModuleTarget) => new Stage(target, 4);
 * ```
 */
export type ModuleTarget = URL | string | {
  /** The module's URL or specifier. */
  module: URL | string;
  /** The name of the export. */
  export: string;
};

/**
 * What a stage runs: a self-contained task function or worker class, or a
 * module target.
 *
 * @typeParam I The type of the tasks.
 * @typeParam O The type of the results.
 *
 * @example Usage
 * ```ts
 * import { OrderedStage, type Target } from "@mpipe/mpipe";
 *
 * const targets: Target<number, number>[] = [
 *   (x) => x + 1,
 *   new URL("./increment.ts", import.meta.url),
 * ];
 * const first = new OrderedStage(targets[0]!);
 * ```
 */
export type Target<I, O> =
  | TaskFunction<I, O>
  | WorkerClass<I, O>
  | ModuleTarget;

/** A target as sent to the workers. */
export type ShippedTarget =
  | {
    kind: "source";
    source: string;
    /** The name the class's `extends` clause uses for its base ("" if none). */
    binding: string;
    /** Whether that name is a namespace (`extends mpipe.OrderedWorker`). */
    namespace: boolean;
  }
  | { kind: "module"; specifier: string; exportName: string };

/**
 * Describes `target` for shipping; throws a `TypeError` naming `where` if it
 * cannot be shipped. `ordered` is the worker class's own ordering, if known.
 */
export function shipTarget(
  target: unknown,
  where: string,
): { shipped: ShippedTarget; ordered: boolean | undefined; isClass: boolean } {
  if (typeof target === "function") {
    return shipSource(target as (...args: never[]) => unknown, where);
  }
  if (target instanceof URL || typeof target === "string") {
    return {
      shipped: {
        kind: "module",
        specifier: resolveSpecifier(target),
        exportName: "default",
      },
      ordered: undefined,
      isClass: false,
    };
  }
  if (
    typeof target === "object" && target !== null && "module" in target &&
    "export" in target
  ) {
    const { module, export: exportName } = target as {
      module: unknown;
      export: unknown;
    };
    if (!(module instanceof URL || typeof module === "string")) {
      throw new TypeError(
        `${where}: 'target.module' must be a URL or a string, got ${
          describe(module)
        }`,
      );
    }
    if (typeof exportName !== "string" || exportName === "") {
      throw new TypeError(
        `${where}: 'target.export' must be a non-empty string, got ${
          describe(exportName)
        }`,
      );
    }
    return {
      shipped: {
        kind: "module",
        specifier: resolveSpecifier(module),
        exportName,
      },
      ordered: undefined,
      isClass: false,
    };
  }
  throw new TypeError(
    `${where}: 'target' must be a function, a worker class, a URL, a string or { module, export }, got ${
      describe(target)
    }`,
  );
}

function shipSource(
  target: (...args: never[]) => unknown,
  where: string,
): { shipped: ShippedTarget; ordered: boolean | undefined; isClass: boolean } {
  let source = Function.prototype.toString.call(target);
  if (/\{\s*\[native code\]\s*\}\s*$/.test(source)) {
    throw new TypeError(
      `${where}: 'target' ${
        target.name || "(anonymous)"
      } is a native or bound function, which cannot be shipped to a worker by its source: wrap it in a plain function or use a module target`,
    );
  }
  if (/^class\b/.test(source)) {
    if (!(target.prototype instanceof TaskWorker)) {
      throw new TypeError(
        `${where}: 'target' class ${target.name} must extend OrderedWorker or UnorderedWorker`,
      );
    }
    const parent = Object.getPrototypeOf(target);
    if (![TaskWorker, OrderedWorker, UnorderedWorker].includes(parent)) {
      throw new TypeError(
        `${where}: 'target' class ${target.name} extends ${parent.name}, which is not shipped with it: extend OrderedWorker or UnorderedWorker directly, or use a module target`,
      );
    }
    // The worker rebuilds the class with its `extends` expression bound to the
    // shipped base class; a namespace (mpipe.OrderedWorker) binds its root.
    const match = /^class\b[^{]*?\bextends\s+([\w$]+)(\.[\w$.]+)?/.exec(
      source,
    );
    return {
      shipped: {
        kind: "source",
        source,
        binding: match?.[1] ?? "",
        namespace: match?.[2] !== undefined,
      },
      ordered: (target as unknown as typeof TaskWorker).ordered,
      isClass: true,
    };
  }
  // Method shorthand (`{ f(x) {} }.f`) is not an expression on its own.
  if (!/^(async\s*)?(function\b|\(|[\w$]+\s*=>)/.test(source)) {
    source = source.replace(/^(async\s+)?(\*?\s*)/, "$1function $2");
  }
  return {
    shipped: { kind: "source", source, binding: "", namespace: false },
    ordered: undefined,
    isClass: false,
  };
}

function resolveSpecifier(specifier: URL | string): string {
  if (specifier instanceof URL) return specifier.href;
  if (URL.canParse(specifier)) return specifier;
  const cwd = Deno.cwd().replaceAll("\\", "/");
  return new URL(specifier, `file://${cwd.startsWith("/") ? "" : "/"}${cwd}/`)
    .href;
}
