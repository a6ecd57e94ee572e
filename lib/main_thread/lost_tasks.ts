/**
 * The tasks a lost worker held, as the main thread settles them: each is
 * charged the worker (the one crash budget, `crashBudget`), and is tried
 * again by the worker that takes its place (`retry`), or dropped: past its
 * attempts, its budget (quarantined: never handed to a worker again), or
 * refused by `when`. The records of the tasks to try again come from the lost
 * worker's stash (see `Retries`).
 *
 * @module
 */

import { StageError } from "../errors.ts";
import { type AnyStage, internalsOf } from "../stage/internals.ts";
import type { RetriedTask, WorkerConfig } from "../worker_thread/config.ts";
import { Retries } from "../worker_thread/retries.ts";
import { DEFAULT_CRASH_BUDGET } from "../stage/retry_option.ts";

/** What the charge needs of a lost worker. */
export interface LostWorker {
  stage: AnyStage;
  config: WorkerConfig;
  /** It loaded its target and ran doInit(). */
  ready: boolean;
  /** Its stash buffers, by held place. */
  stash: SharedArrayBuffer[];
}

/** The workers each task has cost its stage, for the tasks lost with one. */
export class LostTasks {
  readonly #losses = new Map<AnyStage, Map<number, number>>();

  /**
   * Charges a lost worker to each task it held: the tasks to try again, and
   * the errors of those dropped (past their attempts, their crash budget, or
   * refused by `when`). A worker lost before it was ready held what it was
   * to take over: the tasks to close (`carried`) and those to retry.
   */
  charge(record: LostWorker, reason: string, cause: unknown): {
    held: number[];
    retried: RetriedTask[];
    dropped: StageError[];
    carried: number[];
    quarantined: number;
  } {
    const { stage, config } = record;
    const state = internalsOf(stage);
    const status = state.status!;
    const name = stage.name;
    const index = config.index;
    // The lost worker wrote its slot last; nothing writes it now.
    const tasks: {
      seq: number;
      stashed: RetriedTask | null;
      running?: boolean;
      idle?: boolean;
    }[] = [];
    const places = status.heldPlaces(index);
    for (let place = 0; place < places.length; place++) {
      const seq = places[place]!;
      if (seq < 0) continue;
      const stash = record.stash[place];
      const read = stash === undefined ? undefined : Retries.read(stash);
      // A task it only closed: it was dropped and reported already.
      if (read === null) continue;
      tasks.push({
        seq,
        stashed: read === undefined ? null : {
          seq,
          record: read.record,
          attempt: read.attempt,
          errors: [],
          rerun: false,
        },
        running: read?.running,
        idle: read?.idle,
      });
    }
    if (places.every((seq) => seq < 0)) {
      for (const seq of status.heldTasks(index)) {
        tasks.push({ seq, stashed: null });
      }
    }
    const carried = !record.ready && config.recover !== null
      ? config.recover.tasks
      : [];
    if (!record.ready) {
      for (const task of config.recover?.retry ?? []) {
        tasks.push({ seq: task.seq, stashed: task });
      }
    }
    tasks.sort((a, b) => a.seq - b.seq);
    // A worker lost in a task's synchronous part was lost by that task: the
    // others it held are run again, neither charged nor counted an attempt.
    // Lost elsewhere (after an await, in a timer), it is charged to all those
    // whose code was running: an idle one (waiting for its retry, or settled
    // with its result waiting for an earlier task's) is run again too.
    const culprit = tasks.some((task) => task.running);
    const held = tasks.map((task) => task.seq);
    const holds = held.length === 0 ? "" : `; it held ${describeTasks(held)}`;
    let losses = this.#losses.get(stage);
    if (losses === undefined) this.#losses.set(stage, losses = new Map());
    const retried: RetriedTask[] = [];
    const dropped: StageError[] = [];
    let quarantined = 0;
    const budget = state.crashBudget ?? DEFAULT_CRASH_BUDGET;
    for (const { seq, stashed, running, idle } of tasks) {
      if ((idle || (culprit && !running)) && stashed !== null) {
        retried.push({
          ...stashed,
          errors: [
            ...stashed.errors,
            ...lostErrors(stashed.attempt - 1).slice(stashed.errors.length),
          ],
          rerun: true,
        });
        continue;
      }
      const cost = (losses.get(seq) ?? 0) + 1;
      losses.set(seq, cost);
      const lost = new StageError(`the worker was lost: ${reason}${holds}`, {
        stage: name,
        worker: index,
        task: seq,
        cause,
      });
      const attempt = stashed?.attempt ?? 1;
      // The errors of the attempts before, as far as they are known (those
      // of attempts in a worker now lost went with it).
      const errors = stashed?.errors.slice() ?? [];
      errors.push(...lostErrors(attempt - 1).slice(errors.length));
      errors.push(lost);
      let verdict: unknown = lost;
      if (cost >= budget && stashed !== null) verdict = null;
      else if (stashed !== null && attempt < state.retry.attempts) {
        try {
          verdict = state.retryWhen === null || state.retryWhen(lost, attempt)
            ? undefined
            : lost;
        } catch (thrown) {
          verdict = errors[errors.length - 1] = thrown;
        }
      }
      if (verdict === undefined) {
        retried.push({
          seq,
          record: stashed!.record,
          attempt: attempt + 1,
          errors: errors.map(cloneable),
          rerun: false,
        });
        continue;
      }
      if (verdict === null) quarantined++;
      const what = verdict === null
        ? `task ${seq} was quarantined: it has cost the stage ${cost} workers (its crashBudget is ${budget}; the last one: ${reason}), and is not handed to a worker again`
        : `the worker was lost: ${reason}${holds}`;
      dropped.push(
        new StageError(
          `${what}${
            errors.length > 1 ? ` (after ${errors.length} attempts)` : ""
          }${
            state.onError !== "fail"
              ? "; a new worker took its place and the task was dropped"
              : state.restart
              ? `; under onError "fail" a task lost with its worker fails the pipeline, restart or not: set onError to "skip" or a function to drop such tasks and go on`
              : ""
          }`,
          {
            stage: name,
            worker: index,
            task: seq,
            cause: verdict ?? lost,
            attempts: errors,
          },
        ),
      );
    }
    return { held, retried, dropped, carried, quarantined };
  }
}

/** Stand-ins for the errors of attempts 1 to `n`, which went with a lost worker. */
function lostErrors(n: number): Error[] {
  return Array.from(
    { length: n },
    (_, i) => new Error(`attempt ${i + 1}'s error was lost with its worker`),
  );
}

/** `error`, or what it says if it cannot be sent to a worker. */
function cloneable(error: unknown): unknown {
  try {
    structuredClone(error);
    return error;
  } catch {
    return String(error);
  }
}

/** Names tasks `tasks` (in order) by their runs: "task 3", "tasks 3 to 5, 9 and 12". */
export function describeTasks(tasks: readonly number[]): string {
  const runs: string[] = [];
  for (let i = 0; i < tasks.length;) {
    let end = i;
    while (end + 1 < tasks.length && tasks[end + 1] === tasks[end]! + 1) end++;
    runs.push(end === i ? `${tasks[i]}` : `${tasks[i]} to ${tasks[end]}`);
    i = end + 1;
  }
  const shown = runs.length > 8 ? [...runs.slice(0, 7), "more"] : runs;
  const list = shown.length === 1
    ? shown[0]
    : `${shown.slice(0, -1).join(", ")} and ${shown.at(-1)}`;
  return `task${tasks.length > 1 ? "s" : ""} ${list}`;
}
