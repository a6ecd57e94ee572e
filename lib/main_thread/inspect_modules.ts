/**
 * The ordering of `Stage`s of module targets, learnt before their workers
 * start: a worker imports the module and reads its export's `ordered`.
 *
 * @module
 */

import { StageError } from "../errors.ts";
import { type AnyStage, internalsOf } from "../stage/internals.ts";
import { loadError, revive } from "./stage_errors.ts";
import { scriptUrl } from "../worker_thread/script.ts";

/**
 * Learns the ordering of each `Stage` whose module target's is not known yet,
 * from the worker class it exports. `signal` (the run was cut short) kills the
 * workers that import them: a module whose top level never ends must not
 * keep the process alive.
 */
export async function inspectModules(
  stages: AnyStage[],
  signal: AbortSignal,
): Promise<void> {
  await Promise.all(stages.map((stage) => inspectModule(stage, signal)));
}

/**
 * The script of the worker that imports a module target to read its export's
 * `ordered`. The main thread does not import it itself: the module may be the
 * main module, or one still evaluating (a top-level `await` that waits for
 * this pipeline), and importing it there would wait for itself for ever.
 */
let inspectorUrl = "";

/** Each inspected export's ordering, by specifier and export: a worker's start is paid once per process. */
const orderings = new Map<string, boolean>();

async function inspectModule(
  stage: AnyStage,
  signal: AbortSignal,
): Promise<void> {
  const state = internalsOf(stage);
  const shipped = state.shipped;
  if (shipped.kind !== "module") return;
  const key = `${shipped.specifier}#${shipped.exportName}`;
  const known = orderings.get(key);
  if (known !== undefined) {
    state.ordered = known;
    return;
  }
  inspectorUrl ||= scriptUrl(
    [],
    `self.onmessage = async ({ data: [specifier, name] }) => {
  try {
    const value = (await import(specifier))[name];
    // A worker class says its ordering; a task function runs ordered, as
    // under OrderedStage (a script may export either, as in Python MPipe).
    postMessage({ ordered: typeof value === "function" ? value.ordered ?? true : undefined });
  } catch (error) {
    postMessage({ error, errorName: error?.name });
  }
};`,
  );
  const worker = new Worker(inspectorUrl, {
    type: "module",
    name: `${stage.name} (inspect)`,
  });
  let answer: { ordered?: unknown; error?: unknown; errorName?: string };
  let stopWaiting = () => {};
  try {
    answer = await new Promise((resolve) => {
      worker.onmessage = (event) => resolve(event.data);
      worker.onerror = (event) => {
        event.preventDefault();
        resolve({ error: event.error ?? event.message });
      };
      // The run was cut short: it no longer waits for the answer.
      stopWaiting = () => resolve({});
      signal.addEventListener("abort", stopWaiting, { once: true });
      worker.postMessage([shipped.specifier, shipped.exportName]);
    });
  } finally {
    signal.removeEventListener("abort", stopWaiting);
    worker.terminate();
  }
  if (signal.aborted) return;
  if ("error" in answer) {
    throw loadError(
      stage.name,
      undefined,
      revive(answer.error, answer.errorName),
    );
  }
  if (typeof answer.ordered !== "boolean") {
    throw new StageError(
      `export '${shipped.exportName}' of ${shipped.specifier} is neither a worker class nor a task function: export a class extending OrderedWorker or UnorderedWorker, or a function`,
      { stage: stage.name },
    );
  }
  orderings.set(key, answer.ordered);
  state.ordered = answer.ordered;
}
