/**
 * The `StageError`s made of what workers report: a target that cannot be
 * loaded, a `doInit()` that throws, a task that fails. Each says what went
 * wrong, where, and what to do.
 *
 * @module
 */

import { StageError } from "../errors.ts";
import { remoteFailure } from "../stage/cluster.ts";
import { TargetLoader } from "../worker_thread/target_loader.ts";
import { type AnyStage, internalsOf } from "../stage/internals.ts";
import type { WorkerMessage } from "../worker_thread/scope.ts";

/** The error of a target that could not be loaded (by a worker, or by the main thread's inspection). */
export function loadError(
  stage: string,
  worker: number | undefined,
  error: unknown,
): StageError {
  const message = error instanceof Error ? error.message : String(error);
  const hint = /read access|NotCapable|PermissionDenied/i.test(message)
    ? " (a module target is imported by the stage's workers, which need read access for a local file; or pass the function or class itself)"
    : "";
  return new StageError(`cannot load the target: ${message}${hint}`, {
    stage,
    worker,
    cause: error,
  });
}

/** What to do when a shipped target used a name that does not exist in the worker. */
function missingNameHint(stage: AnyStage, error: unknown): string {
  const missing = TargetLoader.missingName(error);
  if (
    missing === null || internalsOf(stage).shipped.kind !== "source" ||
    !TargetLoader.isOwnMissingName(error)
  ) {
    return "";
  }
  const move =
    `A function or class target is shipped by its source and may use only globals and its parameters: move it into a module and pass a module target, e.g. new URL("./task.ts", import.meta.url)`;
  if (!TargetLoader.WORKER_GLOBALS.includes(missing)) {
    return `: the target refers to '${missing}', which does not exist in the worker. ${move}`;
  }
  // The worker has its own, shadowed so as not to stand in for an outer variable.
  const own = missing === "self"
    ? "globalThis"
    : `globalThis.${missing}${missing === "close" ? "()" : ""}`;
  return `: the target refers to '${missing}' by its bare name, which a shipped target may not use. For the worker's own '${missing}', write ${own}. For an outer variable of that name: ${move}`;
}

/**
 * The message of a sandboxed stage's `NotCapable` error, without Deno's hint
 * to run the program with a flag (the stage's sandbox denied it, not the
 * program's permissions); null for any other error.
 */
function sandboxed(stage: AnyStage, error: Error): string | null {
  const { permissions } = internalsOf(stage);
  if (permissions === "inherit" || error.name !== "NotCapable") return null;
  const flag = /,? run again with the --allow-(\w+) flag/.exec(error.message);
  const kind = flag?.[1] ?? "that";
  return `${
    flag === null ? error.message : error.message.replace(flag[0], "")
  }: the stage's sandbox denied it (its options.permissions is ${
    JSON.stringify(permissions)
  }); allow it there, e.g. permissions: { ${kind}: [...] } (the program must have it too)`;
}

/**
 * The error a worker sent, as it was thrown there: a structured clone makes
 * Deno's own errors (`NotCapable`, `NotFound`, ...) plain `Error`s, so they
 * are made again from their name.
 */
export function revive(error: unknown, name: string | undefined): unknown {
  const errors = Deno.errors as unknown as Record<
    string,
    new (message: string) => Error
  >;
  if (!(error instanceof Error) || name === undefined || name === error.name) {
    return error;
  }
  const Class = Object.hasOwn(errors, name) ? errors[name] : undefined;
  if (Class === undefined) {
    error.name = name;
    return error;
  }
  const revived = new Class(error.message);
  revived.stack = error.stack;
  return revived;
}

/** The error of a worker's "error" message: a failed load, `doInit()` or task. */
export function workerError(
  stage: AnyStage,
  index: number,
  message: Extract<WorkerMessage, { type: "error" }>,
): StageError {
  const { phase, task } = message;
  const attempts = message.attempts?.map((error) => revive(error, undefined));
  const remote = remoteFailure(message.error);
  if (remote !== null) {
    // A remote stage's stand-in rejected the task with where it ran (the
    // last attempt's host); each attempt's error is as thrown on its host.
    const { host, worker, what } = remote.mpipeRemote;
    const cause = remote.error;
    const text = cause instanceof Error ? cause.message : String(cause);
    const failed = attempts !== undefined && attempts.length > 1
      ? `task ${task} failed after ${attempts.length} attempts`
      : `task ${task} failed`;
    return new StageError(`${what ?? failed}: ${text}`, {
      stage: stage.name,
      host,
      worker,
      task,
      cause,
      attempts: attempts === undefined ? undefined : [
        ...attempts.slice(0, -1).map((error) =>
          remoteFailure(error)?.error ?? error
        ),
        cause,
      ],
    });
  }
  const error = revive(message.error, message.errorName);
  const hint = missingNameHint(stage, error);
  if (phase === "load" && hint === "") {
    return loadError(stage.name, index, error);
  }
  const text = error instanceof Error
    ? sandboxed(stage, error) ?? error.message
    : String(error);
  const what = phase === "load"
    ? "cannot load the target"
    : phase === "init"
    ? "doInit() failed"
    : attempts !== undefined && attempts.length > 1
    ? `task ${task} failed after ${attempts.length} attempts`
    : `task ${task} failed`;
  return new StageError(`${what}: ${text}${hint}`, {
    stage: stage.name,
    worker: index,
    task,
    cause: error,
    // The last attempt's error is the cause itself, as revived.
    attempts: attempts === undefined ? undefined : [
      ...attempts.slice(0, -1),
      error,
    ],
  });
}

/** The error of a task that failed and was skipped, for an `onError` function. */
export function skippedError(
  stage: AnyStage,
  index: number,
  task: number,
  error: unknown,
  errorName?: string,
  attempts?: unknown[],
): StageError {
  return workerError(stage, index, {
    type: "error",
    phase: "task",
    task,
    error,
    errorName,
    attempts,
  });
}
