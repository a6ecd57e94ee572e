/**
 * Made-up statistics for the tests of what reads them (the insights report,
 * the progress display): a run described in a few numbers, shaped as
 * `pipe.stats()` returns it.
 *
 * @module
 */

import type {
  PipelineStats,
  StageStats,
  TaskDurations,
  WorkerStats,
} from "../../mod.ts";

/** An empty task-duration histogram. */
function noDurations(): TaskDurations {
  const boundsMs = [0.01, 0.1, 1, 10, 100, 1000, 10000];
  return { boundsMs, counts: [...boundsMs, Infinity].map(() => 0), sumMs: 0 };
}

/** A worker that worked `working` ms, was blocked `blocked` ms and waited `waiting` ms. */
export function fakeWorker(
  working: number,
  waiting: number,
  blocked = 0,
  more: Partial<WorkerStats> = {},
): WorkerStats {
  return {
    tasks: 0,
    results: 0,
    skipped: 0,
    inFlight: 0,
    busyMs: working + blocked,
    idleMs: waiting,
    blockedMs: blocked,
    awaitingMs: 0,
    startMs: 40,
    initMs: 0.5,
    restarts: 0,
    retries: 0,
    quarantined: 0,
    retried: [],
    slowest: [],
    durations: noDurations(),
    spans: [{ startMs: 0, endMs: null }],
    ...more,
  };
}

/** A stage of `workers`, linked to the stages at `next`, that did `tasks` tasks. */
export function fakeStage(
  name: string,
  workers: WorkerStats[],
  more: Partial<StageStats> = {},
): StageStats {
  const tasks = more.tasks ?? 100;
  return {
    name,
    size: workers.length,
    lowestSize: workers.length,
    highestSize: workers.length,
    elastic: null,
    remote: false,
    hosts: [],
    ordered: true,
    received: tasks,
    tasks,
    results: tasks,
    skipped: 0,
    inFlight: 0,
    backlog: 0,
    dropped: 0,
    fullMs: 0,
    next: [],
    within: null,
    workers,
    retries: 0,
    quarantined: 0,
    retried: [],
    slowest: [],
    durations: noDurations(),
    ...more,
  };
}

/** A run of `stages`, `elapsedMs` long, over (`done`, by its stop) unless told otherwise. */
export function fakeRun(
  stages: StageStats[],
  elapsedMs = 1000,
  more: Partial<PipelineStats> = {},
): PipelineStats {
  const done = more.done ?? true;
  return {
    elapsedMs,
    done,
    end: done ? "stop" : null,
    put: 100,
    read: 100,
    stages,
    resizes: [],
    arena: {
      capacity: 0,
      usedBytes: 0,
      highBytes: 0,
      live: 0,
      allocations: 0,
      fallbacks: 0,
      untracked: 0,
    },
    ...more,
  };
}
