/**
 * The pipeline's workers, seen from the main thread: it starts them, listens
 * to their (rare) messages, replaces the lost ones, watches timed tasks, and
 * kills them all at the end.
 *
 * Workers tell the main thread only what happens once or seldom (ready,
 * exit, an error, a lost worker, a skipped task); tasks and results never go
 * through messages.
 *
 * @module
 */

import { StageError } from "../errors.ts";
import type { RunView } from "./run_state.ts";
import { type AnyStage, internalsOf } from "../stage/internals.ts";
import { Dismissal } from "../shared_memory/dismissal.ts";
import { StageStatus } from "../shared_memory/status.ts";
import { loadError, skippedError, workerError } from "./stage_errors.ts";
import type { WorkerConfig } from "../worker_thread/config.ts";
import { describeTasks, LostTasks } from "./lost_tasks.ts";
import type { WorkerMessage } from "../worker_thread/scope.ts";
import type { SkipReports } from "./skip_reports.ts";
import { stageWorkerScript } from "../worker_thread/script.ts";
import { Watchdog } from "./watchdog.ts";
import type { SleepWord } from "./wiring.ts";
import { type PlaceSpan, StagePlaces } from "./places.ts";

/** A running worker and what it was started with. */
interface WorkerRecord {
  stage: AnyStage;
  config: WorkerConfig;
  worker: Worker;
  /** It exited, was lost or was killed: ignore what it still says. */
  gone: boolean;
  /** It loaded its target and ran doInit(). */
  ready: boolean;
  /** Its place's skip count when it started (StageStatus.SKIPS). */
  skipsAtStart: number;
  /** Skip reports received from it. */
  reports: number;
  /**
   * It was killed and replaced, but its thread lives on until its last skip
   * reports have arrived (`Worker.terminate()` drops messages in flight).
   */
  retiring: ReturnType<typeof setTimeout> | null;
  /** The tasks its place had finished or skipped when it started. */
  tasksAtStart: number;
  /** How many workers before it in its place were lost in a row before they were ready. */
  lostInRow: number;
  /** Its stash buffers, by held place, under `retry` (see `Retries`). */
  stash: SharedArrayBuffer[];
}

/** How long a replaced worker's reports may take to arrive before they are written off. */
const RETIRE_MS = 2000;

/**
 * How many workers in one place may be lost in a row before they are ready
 * (in `doInit()` or loading the target) before the stage fails instead of
 * replacing them again (they would otherwise be replaced for ever). Workers
 * lost in a task count against the task instead (`crashBudget`).
 */
const MAX_LOST_IN_ROW = 3;

/** What the supervisor tells the pipeline. */
export interface SupervisorEvents {
  /** A worker failed the pipeline. */
  fail(error: StageError): void;
  /**
   * Every worker is gone: each exited by itself after the stop, or was
   * killed (the run was cut short).
   */
  allGone(): void;
  /** A worker left elastic `stage`, idle `idleMs`, or `asked` to; it has `size` workers now. */
  left(stage: AnyStage, size: number, idleMs: number, asked: boolean): void;
}

/** Starts, watches, replaces and kills the workers of a pipeline. */
export class Supervisor {
  readonly #run: RunView;
  readonly #events: SupervisorEvents;
  readonly #reports: SkipReports;
  /** Each stage's places, to tell the reports when a stage is done and to add workers to elastic ones. */
  readonly #places = new Map<AnyStage, StagePlaces>();
  /** Places of every stage not yet done. */
  #placesLeft = 0;
  readonly #sleepWords: readonly SleepWord[];
  #workers: WorkerRecord[] = [];
  /** Replaced workers whose last reports are still on their way (see #retire). */
  readonly #retiring = new Set<WorkerRecord>();
  #alive = 0;
  /** Every worker exited by itself after the stop (none was killed). */
  #exitedAll = false;
  #watchdog: Watchdog | undefined;
  /** The workers each task has cost so far, by stage, for tasks lost with one. */
  readonly #lostTasks = new LostTasks();

  constructor(
    run: RunView,
    sleepWords: readonly SleepWord[],
    reports: SkipReports,
    events: SupervisorEvents,
  ) {
    this.#run = run;
    this.#reports = reports;
    this.#sleepWords = sleepWords;
    this.#events = events;
  }

  /** Whether any worker still runs, or an elastic stage may still start one. */
  get running(): boolean {
    return this.#placesLeft > 0;
  }

  /**
   * Whether every worker exited by itself after passing the stop on, and
   * none that was replaced is still retiring: no thread of the pipeline
   * reads or writes its rings any more.
   */
  get allExited(): boolean {
    return this.#exitedAll && this.#retiring.size === 0;
  }

  /**
   * Starts every stage's workers, and the watchdog if a stage has a task
   * timeout. Throws a `StageError` if Deno refuses a worker; the caller then
   * stops those already started.
   */
  start(stages: readonly { stage: AnyStage; configs: WorkerConfig[] }[]): void {
    for (const { stage, configs } of stages) {
      const open = configs[0]?.elastic?.min ?? configs.length;
      this.#places.set(stage, new StagePlaces(configs, open));
      this.#placesLeft += configs.length;
      try {
        // An elastic stage's places past `min` wait, parked (see Wiring).
        for (const config of configs.slice(0, open)) {
          this.#spawn(stage, config, 0);
        }
      } catch (error) {
        throw spawnError(stage, error);
      }
    }
    const timeouts = stages.map(({ stage }) => internalsOf(stage).taskTimeout)
      .filter(Number.isFinite);
    if (timeouts.length > 0) {
      this.#watchdog = new Watchdog(
        Math.min(...timeouts),
        () => this.#workers,
        (record, task, timeout) =>
          this.#lost(
            record as WorkerRecord,
            `task ${task} ran longer than its taskTimeout of ${timeout} ms`,
            undefined,
          ),
      );
    }
  }

  /** Kills every worker, even one asleep in `Atomics.wait`, and reports them all gone. */
  killAll(): void {
    for (const record of this.#workers) this.#kill(record);
    for (const record of this.#retiring) this.#endRetirement(record);
    this.#wakeSleepers(true);
    this.#workers = [];
    this.#alive = 0;
    this.#placesLeft = 0;
    this.#allGone();
  }

  /**
   * Adds a worker to elastic `stage` in a parked place; false if it has
   * none, or its places are being stopped (the stop came). Throws a
   * `StageError` if Deno refuses the worker.
   */
  grow(stage: AnyStage): boolean {
    const places = this.#places.get(stage);
    if (
      places === undefined || this.#run.failure !== null ||
      this.#run.terminated || this.#exitedAll
    ) {
      return false;
    }
    const config = places.open(internalsOf(stage).status!);
    if (config === null) return false;
    try {
      this.#spawn(stage, config, 0);
    } catch (error) {
      throw spawnError(stage, error);
    }
    return true;
  }

  /** `stage`'s size now, and its lowest and highest: fixed stages keep theirs. */
  sizeOf(stage: AnyStage): { size: number; lowest: number; highest: number } {
    const places = this.#places.get(stage);
    if (places === undefined) {
      return { size: stage.size, lowest: stage.size, highest: stage.size };
    }
    return {
      size: places.size,
      lowest: places.lowest,
      highest: places.highest,
    };
  }

  /** How many workers are still starting (not ready yet): `stage`'s, or with null every stage's. */
  starting(stage: AnyStage | null): number {
    let starting = 0;
    for (const record of this.#workers) {
      if ((stage === null || record.stage === stage) && !record.ready) {
        starting++;
      }
    }
    return starting;
  }

  /** When each of `stage`'s places was held (none before the workers start). */
  spansOf(stage: AnyStage): readonly (readonly PlaceSpan[])[] {
    return this.#places.get(stage)?.spans ?? [];
  }

  /** Starts one worker; `config.recover` says if it replaces a lost one. */
  #spawn(stage: AnyStage, config: WorkerConfig, lostInRow: number): void {
    config.spawnedAt = performance.timeOrigin + performance.now();
    this.#places.get(stage)!.started(config);
    const { permissions, shipped } = internalsOf(stage);
    const preload = permissions !== "inherit" && shipped.kind === "module"
      ? shipped.specifier
      : "";
    const worker = new Worker(stageWorkerScript(preload), {
      type: "module",
      name: `${stage.name}#${config.index}`,
      // Only a sandboxed stage passes permissions: they need Deno's
      // --unstable-worker-options (checked in new Pipeline).
      ...(permissions === "inherit" ? {} : { deno: { permissions } }),
    } as WorkerOptions);
    const status = internalsOf(stage).status!;
    const record: WorkerRecord = {
      stage,
      config,
      worker,
      gone: false,
      ready: false,
      skipsAtStart: Atomics.load(
        status.words,
        status.at(config.index, StageStatus.SKIPS),
      ),
      reports: 0,
      retiring: null,
      // The last worker in this place wrote it; nothing writes it now.
      tasksAtStart: processed(status, config.index),
      lostInRow,
      stash: [],
    };
    worker.onmessage = (event: MessageEvent<WorkerMessage>) =>
      this.#onMessage(record, event.data);
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      if (preload !== "" && !record.ready) {
        // Its script could not import the module target it preloads.
        if (record.gone) return;
        return this.#events.fail(
          loadError(stage.name, config.index, event.error ?? event.message),
        );
      }
      this.#lost(
        record,
        `it threw outside doTask(): ${event.message}`,
        event.error,
      );
    };
    worker.postMessage(config);
    this.#workers.push(record);
    this.#alive++;
  }

  /** A worker ended by itself: it passed the stop on, or left its elastic stage. */
  #gone(record: WorkerRecord): void {
    this.#kill(record);
    const at = this.#workers.indexOf(record);
    if (at >= 0) this.#workers.splice(at, 1);
    this.#alive--;
  }

  #onMessage(record: WorkerRecord, message: WorkerMessage): void {
    // A replaced worker's skip reports still count; nothing else of it does.
    if (record.gone && !(record.retiring && message.type === "skipped")) return;
    const { stage, config } = record;
    switch (message.type) {
      case "ready":
        record.ready = true;
        break;
      case "exit": {
        this.#gone(record);
        // Its own place, and the parked places it stopped.
        const done = 1 + message.stopped;
        const places = this.#places.get(stage)!;
        places.left -= done;
        if (places.left === 0) this.#reports.exited(stage);
        this.#placesLeft -= done;
        if (this.#placesLeft === 0) {
          // Nothing is left to kill: forget the workers and their configs.
          this.#exitedAll = true;
          this.#workers = [];
          this.#allGone();
        }
        break;
      }
      case "left": {
        this.#gone(record);
        const places = this.#places.get(stage)!;
        places.resized(-1);
        this.#events.left(stage, places.size, message.idleMs, message.asked);
        break;
      }
      case "error":
        this.#events.fail(workerError(stage, config.index, message));
        break;
      case "skipped":
        record.reports++;
        this.#reports.skipped(
          stage,
          config.index,
          message.task,
          skippedError(
            stage,
            config.index,
            message.task,
            message.error,
            message.errorName,
            message.attempts,
          ),
        );
        if (record.retiring !== null) this.#retireWhenReported(record);
        break;
      case "lost":
        this.#lost(record, message.reason, message.error);
        break;
      case "stash":
        record.stash[message.place] = message.buffer;
        break;
      case "hosts":
        internalsOf(stage).hosts = message.hosts;
        break;
    }
  }

  /**
   * A worker is lost: it died unasked (it called close() or Deno.exit(), or
   * threw outside a task), or ran a task past its timeout. Each task it held
   * is charged the worker, and tried again (`retry`) by a worker that takes
   * its place, or, past its attempts or its `crashBudget`, fails as if it
   * threw: under onError "fail" it fails the pipeline; otherwise the
   * replacement settles it, and it is counted and reported. A worker takes
   * the lost one's place under `restart` or `retry` (or after a timeout);
   * else the pipeline fails.
   */
  #lost(record: WorkerRecord, reason: string, cause: unknown): void {
    if (record.gone || this.#run.failure !== null || this.#run.terminated) {
      return;
    }
    // Raise the kill word now (it never writes again); the thread itself is
    // terminated once its reports are in (#retire), or at once if it fails.
    // A worker that had begun to fail the pipeline (see `Dismissal.fail`) is
    // not replaced: the failure word stops every worker, a replacement too.
    // Its loss fails the pipeline now: its error may never be sent (its
    // thread ended first), and a wait for it could last for ever.
    const failing = !this.#kill(record, false);
    this.#wakeSleepers(false);
    const { stage, config } = record;
    const state = internalsOf(stage);
    const status = state.status!;
    const { held, retried, dropped, carried, quarantined } = this.#lostTasks
      .charge(
        record,
        reason,
        cause,
      );
    const holds = held.length === 0 ? "" : `; it held ${describeTasks(held)}`;
    const timedOut = reason.startsWith("task");
    // Only workers lost before they are ready count against their place.
    const lostInRow = record.ready ? 0 : record.lostInRow + 1;
    const giveUp = lostInRow >= MAX_LOST_IN_ROW;
    const failed = state.onError === "fail" ? dropped[0] : undefined;
    const replace = !failing && !giveUp && failed === undefined &&
      (state.restart || (state.retry.attempts > 1 && state.standIn === null) ||
        (timedOut && state.onError !== "fail"));
    if (!replace) {
      record.worker.terminate();
      if (failed !== undefined && !giveUp) return this.#events.fail(failed);
      return this.#events.fail(
        new StageError(
          `the worker was lost: ${reason}${holds}${
            giveUp
              ? `; ${lostInRow} workers in its place were lost in a row before they were ready, so it is not replaced again: fix the cause (in doInit() or the target's loading, or an error outside doTask())`
              : ""
          }`,
          { stage: stage.name, worker: config.index, task: held[0], cause },
        ),
      );
    }
    this.#retire(record);
    // Readers of `skipped` load it at any time; other workers add to it too.
    Atomics.add(status.words, StageStatus.SKIPPED, dropped.length);
    // The place's figures, which the replacement goes on from: the dropped
    // tasks are counted, no longer in flight, and nothing runs until it is
    // ready. Plain stores: the lost worker writes no more, and the
    // replacement reads them after the message that starts it.
    const figures = status.figures;
    const figure = (which: number) => status.figure(config.index, which);
    figures[figure(StageStatus.DROPPED)]! += dropped.length;
    figures[figure(StageStatus.QUARANTINED)]! += quarantined;
    figures[figure(StageStatus.IN_FLIGHT)] = 0;
    figures[figure(StageStatus.SINCE)] = 0;
    const to = status.words[status.at(config.index, StageStatus.TO)]!;
    status.dropHeld(config.index);
    // The replacement starts with no timed task running.
    Atomics.store(
      status.words,
      status.at(config.index, StageStatus.TASK_STATE),
      StageStatus.taskState(config.generation + 1, StageStatus.IDLE),
    );
    this.#alive--;
    this.#workers.splice(this.#workers.indexOf(record), 1);
    figures[figure(StageStatus.RESTARTS)]!++;
    this.#spawn(stage, {
      ...config,
      generation: config.generation + 1,
      recover: {
        tasks: [...carried, ...dropped.map((error) => error.task!)].sort((
          a,
          b,
        ) => a - b),
        to: Math.max(to, config.recover?.to ?? 0),
        retry: retried,
      },
    }, lostInRow);
    this.#reports.lost(stage, dropped);
  }

  /**
   * A replaced worker: terminated once the skip reports it sent have all
   * arrived, or after RETIRE_MS (then the missing ones are written off).
   */
  #retire(record: WorkerRecord): void {
    this.#retiring.add(record);
    record.retiring = setTimeout(() => {
      const { stage, config } = record;
      this.#reports.abandoned(stage, config.index, this.#unreported(record));
      this.#endRetirement(record);
    }, RETIRE_MS);
    Deno.unrefTimer(record.retiring as unknown as number);
    this.#retireWhenReported(record);
  }

  #retireWhenReported(record: WorkerRecord): void {
    if (this.#unreported(record) <= 0) this.#endRetirement(record);
  }

  /** Skips the worker counted and the main thread has not heard of. */
  #unreported(record: WorkerRecord): number {
    const status = internalsOf(record.stage).status!;
    const sent = Atomics.load(
      status.words,
      status.at(record.config.index, StageStatus.SKIPS),
    ) - record.skipsAtStart;
    return sent - record.reports;
  }

  #endRetirement(record: WorkerRecord): void {
    clearTimeout(record.retiring ?? undefined);
    record.retiring = null;
    this.#retiring.delete(record);
    record.worker.terminate();
  }

  /**
   * Kills a worker for good: even one asleep in `Atomics.wait` (see
   * `Dismissal.killWord`). False if it had begun to fail the pipeline first
   * (see `Dismissal.fail`).
   */
  #kill(record: WorkerRecord, terminate = true): boolean {
    record.gone = true;
    const { stage, config } = record;
    if (terminate) this.#places.get(stage)?.ended(config.index);
    const status = internalsOf(stage).status!;
    // Raised before any wake-up, so a worker that wakes sees it. An exchange:
    // the worker's own compare-exchange to FAILING races it.
    const before = Atomics.exchange(
      status.words,
      status.at(config.index, StageStatus.KILL),
      config.generation + 1,
    );
    if (terminate) record.worker.terminate();
    return before !== Dismissal.FAILING;
  }

  /**
   * Wakes sleeping workers: the killed ones then end, the others look again.
   * Each word's value changes, so that a worker between reading a bell and
   * sleeping on it cannot miss the wake-up. Lock words are only freed when
   * every worker is killed (`all`): a lost worker never sleeps on a lock,
   * since it is lost while running task code.
   */
  #wakeSleepers(all: boolean): void {
    for (const { words, index, kind } of this.#sleepWords) {
      // Change the value first, then notify: a worker about to sleep on the
      // old value returns at once.
      if (kind === "counter") Atomics.add(words, index, 1);
      else if (!all) continue;
      else Atomics.store(words, index, 0);
      Atomics.notify(words, index);
    }
  }

  #allGone(): void {
    this.#watchdog?.stop();
    this.#events.allGone();
  }
}

/** Deno refused to start one of `stage`'s workers. */
function spawnError(stage: AnyStage, error: unknown): StageError {
  const message = error instanceof Error ? error.message : String(error);
  const hint = error instanceof Error && error.name === "NotCapable"
    ? "; its 'options.permissions' ask for more than the program was granted: grant those to the program (e.g. --allow-net) or ask for fewer"
    : "";
  return new StageError(`its workers could not start: ${message}${hint}`, {
    stage: stage.name,
    cause: error,
  });
}

/** The tasks worker place `index` has finished (`TASKS`) or skipped itself (`SKIPS`). */
function processed(status: StageStatus, index: number): number {
  return status.figures[status.figure(index, StageStatus.TASKS)]! +
    Atomics.load(status.words, status.at(index, StageStatus.SKIPS));
}
