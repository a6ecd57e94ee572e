/**
 * Remote stages: the contract a stage's `cluster` option takes (what a
 * cluster must offer, and how a remote stage and its failures are described).
 * The main thread opens the runs (`lib/main_thread/cluster_runs.ts`).
 *
 * A pipeline stands in for a remote stage with one local worker of its own
 * kind: a module target that the cluster names (for JetStream,
 * `lib/jetstream/coordinator/bridge.ts`), run with `concurrency` = the
 * stage's size. Each of its tasks settles when the task's result comes back
 * from the machine that ran it, so the engine's rings, ordering,
 * backpressure, stop and error handling apply to remote stages unchanged.
 * This file keeps the package free of any cluster's client: it only names
 * what a cluster must offer.
 *
 * @module
 */

/**
 * A place other than this process's Web Workers to run stages, given to a
 * stage as its `cluster` option. `JetStreamCluster`, from
 * `@mpipe/mpipe/jetstream`, is one; the pipeline calls `openRun` once per
 * pipeline, as it is built.
 *
 * @example A cluster that runs each stage in a local worker of its own
 * ```ts
 * import { type Cluster, OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * // The stand-in runs the stage's own function: good for tests only.
 * const local: Cluster = {
 *   openRun: (stages) => ({
 *     standIn: (index) => ({
 *       module: "data:text/javascript,export default class { " +
 *         "constructor(source) { this.run = (0, eval)(`(${source})`); } " +
 *         "doTask(task) { return Promise.resolve(this.run(task)); } }",
 *       args: [(stages[index]!.target as { source: string }).source],
 *     }),
 *     close: () => Promise.resolve(),
 *   }),
 * };
 * const stage = new OrderedStage((x: number) => x * 2, 4, { cluster: local });
 * const pipe = new Pipeline<number, number>(stage);
 * for (let i = 0; i < 5; i++) pipe.put(i);
 * pipe.put(null);
 * assert.deepEqual(await Array.fromAsync(pipe), [0, 2, 4, 6, 8]);
 * ```
 */
export interface Cluster {
  /**
   * Opens a run for the remote stages of one pipeline: they run on this
   * cluster until the returned run is closed.
   *
   * @param stages The pipeline's stages on this cluster, each described as
   * it travels.
   * @returns The run, which names each stage's stand-in worker.
   */
  openRun(stages: readonly RemoteStage[]): ClusterRun;
}

/**
 * One pipeline's use of a cluster, from `Cluster.openRun`.
 *
 * @example A run whose stand-in doubles each task, closed once
 * ```ts
 * import type { ClusterRun } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * let closed = 0;
 * const run: ClusterRun = {
 *   standIn: () => ({
 *     module: "data:text/javascript,export default class { " +
 *       "doTask(task) { return Promise.resolve(task * 2); } }",
 *     args: [],
 *   }),
 *   close: () => {
 *     closed++;
 *     return Promise.resolve();
 *   },
 * };
 * assert.match(run.standIn(0).module, /^data:/);
 * await run.close();
 * assert.equal(closed, 1);
 * ```
 */
export interface ClusterRun {
  /**
   * The local worker that stands in for a remote stage: a module whose
   * default export is a worker class, and its constructor's arguments
   * (structured-cloneable). The pipeline runs one such worker per remote
   * stage, with `concurrency` = the stage's size; each `doTask` returns a
   * Promise of the task's result from the cluster. (A stand-in may instead
   * take its tasks in batches, as encoded: see `SendTasks` in
   * `lib/worker_thread/batch_runner.ts`, which `JetStreamCluster`'s does.)
   *
   * @param index The stage's index in the array given to `openRun`.
   * @returns The module's URL and the class's arguments.
   */
  standIn(index: number): { module: string; args: unknown[] };
  /**
   * Removes what the run left on the cluster (queues, consumers). The
   * pipeline calls it once, when every worker has exited (after the stop,
   * a failure or `terminate()`), and `done` settles after it.
   *
   * @returns A Promise that settles once the run's state is removed.
   */
  close(): Promise<void>;
}

/**
 * A remote stage as its pipeline describes it to its cluster.
 *
 * @example What a cluster is told of a stage
 * ```ts
 * import {
 *   type Cluster,
 *   OrderedStage,
 *   Pipeline,
 *   type RemoteStage,
 * } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const told: RemoteStage[] = [];
 * const cluster: Cluster = {
 *   openRun: (stages) => {
 *     told.push(...stages);
 *     return {
 *       standIn: () => ({
 *         module: "data:text/javascript,export default class { " +
 *           "doTask(task) { return Promise.resolve(task); } }",
 *         args: [],
 *       }),
 *       close: () => Promise.resolve(),
 *     };
 *   },
 * };
 * const pipe = new Pipeline<number, number>(
 *   new OrderedStage((x: number) => x, 8, { cluster, name: "echo" }),
 * );
 * await pipe.close();
 * await pipe.done;
 * assert.equal(told[0]!.name, "echo");
 * assert.equal(told[0]!.size, 8);
 * assert.equal(told[0]!.target.kind, "source");
 * ```
 */
export interface RemoteStage {
  /** The stage's name. */
  name: string;
  /** The stage's target as it travels: its source text, or a module's URL. */
  target: RemoteTarget;
  /** How many of its tasks may run at once across the cluster (the stage's size). */
  size: number;
  /** How many tasks each worker that runs it may run at once (its `concurrency` option). */
  concurrency: number;
  /** The worker class's constructor arguments (already a structured clone). */
  args: unknown[];
  /**
   * Milliseconds a task may run (its `taskTimeout` option; `Infinity` if
   * none): the machine that runs it lets it go after this long.
   */
  taskTimeout?: number;
  /**
   * How many machines (hosts) one task may cost, killed or crashed while it
   * ran there, before it is quarantined (its `crashBudget` option), or
   * undefined for the cluster's default.
   */
  crashBudget?: number;
}

/**
 * A target as it travels to another machine: a function or class by its
 * source text (with the name its `extends` clause gives its base class), or
 * a module by its URL and export.
 *
 * @example A module target as it travels
 * ```ts
 * import type { RemoteTarget } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const target: RemoteTarget = {
 *   kind: "module",
 *   specifier: "https://example.com/tasks/score.ts",
 *   exportName: "default",
 * };
 * assert.equal(target.kind, "module");
 * ```
 */
export type RemoteTarget =
  | {
    kind: "source";
    /** The function's or class's source text. */
    source: string;
    /** The name the class's `extends` clause uses for its base ("" if none). */
    binding: string;
    /** Whether that name is a namespace (`extends mpipe.OrderedWorker`). */
    namespace: boolean;
  }
  | {
    kind: "module";
    /** The module's URL. */
    specifier: string;
    /** The name of its export that is the target. */
    exportName: string;
  };

/**
 * Why a remote task failed, as a stand-in rejects it: where it ran, and the
 * error it threw there. The main thread makes a `StageError` of it.
 */
export interface RemoteFailure {
  mpipeRemote: {
    /** The host that ran (or refused) the task. */
    host: string;
    /** The host's worker that ran it, if one did. */
    worker: number | undefined;
    /** What failed, if not the task itself (a refused target). */
    what: string | undefined;
  };
  /** The error the task threw on the host. */
  error: unknown;
}

/** `error` as a remote failure, if a stand-in made it one. */
export function remoteFailure(error: unknown): RemoteFailure | null {
  if (typeof error !== "object" || error === null) return null;
  const remote = (error as Partial<RemoteFailure>).mpipeRemote;
  return typeof remote === "object" && remote !== null &&
      typeof remote.host === "string"
    ? error as RemoteFailure
    : null;
}
