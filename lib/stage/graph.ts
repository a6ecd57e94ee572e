/**
 * Pure functions over the stage graph: which stages a pipeline holds, which
 * are its leaves, how a join's upstream stages group their rings, and cycles.
 * They read the stages' links and settings and change nothing.
 *
 * @module
 */

import { describe } from "../checks.ts";
import { type AnyStage, internalsOf, workersOf } from "./internals.ts";

/** Whether `to` is reachable from `from` by links (so linking `to` to `from` would make a cycle). */
export function reaches(from: AnyStage, to: AnyStage): boolean {
  const stack = [from];
  const seen = new Set<AnyStage>();
  while (stack.length > 0) {
    const stage = stack.pop()!;
    if (stage === to) return true;
    if (seen.has(stage)) continue;
    seen.add(stage);
    stack.push(...internalsOf(stage).next);
  }
  return false;
}

/** `root` and every stage its links (and, `throughFilters`, its filters' sub-pipelines) lead to. */
export function reachable(root: AnyStage, throughFilters = false): AnyStage[] {
  const stages: AnyStage[] = [];
  const stack = [root];
  while (stack.length > 0) {
    const stage = stack.pop()!;
    if (stages.includes(stage)) continue;
    stages.push(stage);
    stack.push(...internalsOf(stage).next);
    if (throughFilters) {
      stack.push(...(internalsOf(stage).filter?.stages ?? []));
    }
  }
  return stages;
}

/**
 * Every stage reachable from `root` (through filters too), root first.
 * Throws a `TypeError` if they cannot make one new pipeline.
 */
export function collectStages(root: AnyStage): AnyStage[] {
  if (internalsOf(root) === undefined) {
    throw new TypeError(
      `Pipeline: 'root' must be a Stage, got ${describe(root)}`,
    );
  }
  const stages = reachable(root, true);
  for (const stage of stages) {
    const state = internalsOf(stage);
    if (state.owner !== null) {
      throw new TypeError(
        `Pipeline: stage '${stage.name}' already belongs to another pipeline: create new stages for each pipeline`,
      );
    }
    for (const previous of state.previous) {
      if (stage === root) {
        throw new TypeError(
          `Pipeline: the root stage '${root.name}' is linked from stage '${previous.name}': build the pipeline from the first stage`,
        );
      }
      if (!stages.includes(previous)) {
        throw new TypeError(
          `Pipeline: stage '${stage.name}' is linked from stage '${previous.name}', which is not reachable from the root '${root.name}'`,
        );
      }
    }
  }
  return stages;
}

/** The stages without links onward among `stages`: every stage reachable from `root` by links. */
export function leavesOf(root: AnyStage): AnyStage[] {
  return reachable(root).filter((stage) =>
    internalsOf(stage).next.length === 0
  );
}

/** The pipeline's leaves: stages whose results go to the main thread (not those of filters' sub-pipelines). */
export function pipelineLeaves(stages: AnyStage[]): AnyStage[] {
  const inFilters = new Set(
    stages.flatMap((stage) =>
      (internalsOf(stage).filter?.stages ?? []).flatMap((sub) => reachable(sub))
    ),
  );
  return stages.filter((stage) =>
    internalsOf(stage).next.length === 0 && !inFilters.has(stage)
  );
}

/** How many producers feed `stage`'s input: the workers of every upstream stage, or 1 (the main thread, or a filter's worker). */
export function producersOf(stage: AnyStage): number {
  const previous = internalsOf(stage).previous;
  if (previous.length === 0) return 1;
  return previous.reduce((sum, upstream) => sum + workersOf(upstream), 0);
}

/**
 * The rings `upstream`'s workers feed a link with: `size` rings, merged by
 * sequence if `upstream` is ordered with several workers. Known once every
 * stage's ordering is (a `Stage` of a module target is inspected first).
 */
export function groupOf(upstream: AnyStage): { size: number; merge: boolean } {
  return {
    size: workersOf(upstream),
    merge: internalsOf(upstream).ordered === true && workersOf(upstream) > 1,
  };
}

/** The index, among `next`'s input rings, of the ring from `stage`'s worker `index`. */
export function ringIndex(
  next: AnyStage,
  stage: AnyStage,
  index: number,
): number {
  let offset = 0;
  for (const previous of internalsOf(next).previous) {
    if (previous === stage) return offset + index;
    offset += workersOf(previous);
  }
  throw new Error("unreachable: stage is not upstream of next");
}

/**
 * `root` and every stage after it in the order tasks reach them: a stage
 * comes after every stage linked to it (a join after all of its upstream
 * stages), and a `FilterStage`'s sub-pipelines, each in the same order,
 * come right after the filter.
 */
export function flowOrder(root: AnyStage): AnyStage[] {
  const order: AnyStage[] = [];
  /** Links into each stage not yet followed. */
  const linksLeft = new Map<AnyStage, number>();
  const ready = [root];
  for (let at = 0; at < ready.length; at++) {
    const stage = ready[at]!;
    const state = internalsOf(stage);
    order.push(stage);
    for (const sub of state.filter?.stages ?? []) order.push(...flowOrder(sub));
    for (const next of state.next) {
      const left = linksLeft.get(next) ?? internalsOf(next).previous.length;
      linksLeft.set(next, left - 1);
      if (left === 1) ready.push(next);
    }
  }
  return order;
}
