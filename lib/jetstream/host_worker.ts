/**
 * A worker of a worker host's local pipeline: its task is one message of a
 * remote stage (a batch of tasks), its result the answer to publish.
 *
 * It rebuilds the stage's target as a stage worker does (`TargetLoader`: a
 * function or class from its source, a module by importing it), runs it on
 * each task of the batch, and encodes their results, and the error of each
 * task that failed, into one answer. A task's failure fails that task only.
 * The targets of the last stages it served stay loaded, with their
 * `doInit()` done, for the next batches.
 *
 * Loaded by the host's pipeline as a module target (see `host.ts`).
 *
 * @module
 */

import { type Run, TargetLoader } from "../target_loader.ts";
import { UnorderedWorker } from "../worker.ts";
import {
  ANSWER,
  decodeMessage,
  Decoder,
  encodeMessage,
  Encoder,
  FAILED,
  MANY,
} from "./protocol.ts";
import type { RemoteTarget } from "../remote.ts";

/** What a host worker needs of a stage, sent with each batch. */
export interface HostStage {
  /** The run and stage, as `<run>/<index>`: the key of its loaded target. */
  key: string;
  name: string;
  target: RemoteTarget;
  args: unknown[];
  concurrency: number;
  /** The host's name, for the answers. */
  host: string;
}

/** A host worker's task: [id, the stage, the message's bytes]. */
export type HostTask = [number, HostStage, Uint8Array];

/** A host worker's result: [id, the answer's bytes]. */
export type HostResult = [number, Uint8Array];

/** A stage's target, loaded (or the reason it could not be). */
type Loaded = { run: Run; error: null } | { run: null; error: unknown };

/** The answer being made: each task's one result, and the others' extras. */
interface Answer {
  results: unknown[];
  extras: [number, number, unknown][] | null;
}

/** A worker of a host's pipeline. */
export default class HostWorker extends UnorderedWorker<HostTask, HostResult> {
  /** How many stages' targets a worker keeps loaded. */
  static readonly KEPT = 32;

  readonly #loaded = new Map<string, Loaded>();
  readonly #encoder = new Encoder();
  readonly #decoder = new Decoder();
  /** This worker's number in the host (its Worker's name ends in `#<n>`). */
  readonly #worker = Number(
    /#(\d+)$/.exec(String((globalThis as { name?: unknown }).name))?.[1] ??
      -1,
  );
  /** The results the running task put with `putResult()`, if any. */
  #put: unknown[] | null = null;
  /** Whether `putResult()` may be called now (not after an await of a task run with others). */
  #putOpen = false;
  #sinkInstalled = false;

  /** Answers one message: runs each of its tasks. */
  doTask(task: HostTask): HostResult | Promise<HostResult> {
    const [id, stage, bytes] = task;
    this.#installSink();
    const loaded = this.#loaded.get(stage.key);
    if (loaded === undefined) {
      return this.#load(stage).then(() => this.doTask(task));
    }
    // Most recently used last: the first is dropped when too many are kept.
    this.#loaded.delete(stage.key);
    this.#loaded.set(stage.key, loaded);
    const [from, tasks] = decodeMessage(this.#decoder, bytes) as [
      number,
      unknown[],
    ];
    const answer: Answer = { results: new Array(tasks.length), extras: null };
    if (loaded.run === null) {
      for (let i = 0; i < tasks.length; i++) {
        answer.results[i] = null;
        this.#fail(answer, i, loaded.error);
      }
      return [id, this.#encode(stage, from, answer)];
    }
    const run = loaded.run;
    for (let i = 0; i < tasks.length; i++) {
      this.#put = null;
      this.#putOpen = true;
      let value: unknown;
      try {
        value = run(tasks[i]);
      } catch (error) {
        answer.results[i] = null;
        this.#fail(answer, i, error);
        continue;
      }
      if (isThenable(value)) {
        return this.#runAsync(run, tasks, i, value, answer, stage)
          .then(() => [id, this.#encode(stage, from, answer)]);
      }
      this.#record(answer, i, value);
    }
    this.#putOpen = false;
    return [id, this.#encode(stage, from, answer)];
  }

  /**
   * Runs the rest of a batch once a task returned a Promise (`first`, of
   * task `start`): one task at a time, or up to the stage's concurrency at
   * once (then `putResult()` works only before a task's first await).
   */
  async #runAsync(
    run: Run,
    tasks: unknown[],
    start: number,
    first: PromiseLike<unknown>,
    answer: Answer,
    stage: HostStage,
  ): Promise<void> {
    // `puts`: the results the task put, taken after its synchronous part
    // when several run at once; else whatever it puts until it settles.
    const settle = async (
      index: number,
      value: unknown,
      puts?: unknown[] | null,
    ) => {
      try {
        const result = await value;
        if (puts !== undefined) this.#put = puts;
        this.#record(answer, index, result);
      } catch (error) {
        answer.results[index] = null;
        this.#fail(answer, index, error);
      }
    };
    if (stage.concurrency <= 1) {
      await settle(start, first);
      for (let i = start + 1; i < tasks.length; i++) {
        this.#put = null;
        this.#putOpen = true;
        let value: unknown;
        try {
          value = run(tasks[i]);
        } catch (error) {
          answer.results[i] = null;
          this.#fail(answer, i, error);
          continue;
        }
        await settle(i, value);
      }
      this.#putOpen = false;
      return;
    }
    // Several at once: each task's synchronous part runs alone, then its
    // Promise joins the others in flight.
    this.#putOpen = false;
    let next = start + 1;
    const lanes = [settle(start, first, this.#put)];
    const lane = async () => {
      while (next < tasks.length) {
        const index = next++;
        this.#put = null;
        this.#putOpen = true;
        let value: unknown;
        try {
          value = run(tasks[index]);
        } catch (error) {
          this.#putOpen = false;
          answer.results[index] = null;
          this.#fail(answer, index, error);
          continue;
        }
        this.#putOpen = false;
        await settle(index, value, this.#put);
      }
    };
    for (let i = 1; i < stage.concurrency; i++) lanes.push(lane());
    lanes[0] = lanes[0]!.then(lane);
    await Promise.all(lanes);
  }

  /** Notes task `index`'s result, with those it put before. */
  #record(answer: Answer, index: number, value: unknown): void {
    const put = this.#put;
    this.#put = null;
    if (put === null) {
      answer.results[index] = value ?? null;
      return;
    }
    if (value !== null && value !== undefined) put.push(value);
    answer.results[index] = null;
    (answer.extras ??= []).push([index, MANY, put]);
  }

  #fail(answer: Answer, index: number, error: unknown): void {
    this.#put = null;
    (answer.extras ??= []).push([index, FAILED, error]);
  }

  /**
   * The answer's bytes. A result (or an error) that cannot be cloned fails
   * its task with the `DataCloneError`, as in a local stage.
   */
  #encode(stage: HostStage, from: number, answer: Answer): Uint8Array {
    answer.extras?.sort((a, b) => a[0] - b[0]);
    const message = () => [
      ANSWER,
      from,
      answer.results,
      answer.extras,
      stage.host,
      this.#worker,
    ];
    try {
      return encodeMessage(this.#encoder, message());
    } catch {
      // Rare: find the values that cannot be encoded, one by one.
      const extras = answer.extras ?? [];
      for (const extra of extras) {
        try {
          this.#encoder.encode(extra[2]);
        } catch (error) {
          // A thrown value that cannot travel travels as its text; results
          // that cannot fail their task.
          extra[2] = extra[1] === FAILED ? new Error(String(extra[2])) : error;
          extra[1] = FAILED;
        }
      }
      for (let i = 0; i < answer.results.length; i++) {
        try {
          this.#encoder.encode(answer.results[i]);
        } catch (error) {
          answer.results[i] = null;
          extras.push([i, FAILED, error]);
        }
      }
      extras.sort((a, b) => a[0] - b[0]);
      answer.extras = extras.length === 0 ? null : extras;
      return encodeMessage(this.#encoder, message());
    }
  }

  /** Loads a stage's target and runs its `doInit()`; keeps the failure if it cannot. */
  async #load(stage: HostStage): Promise<void> {
    let loaded: Loaded;
    try {
      const target = stage.target;
      // The ordering bound to a class's `extends` name does not matter here:
      // the coordinator keeps the stage's order.
      const ordered = target.kind === "source" &&
        target.binding === "OrderedWorker";
      const [run, init] = await TargetLoader.load(
        stage.name,
        target,
        ordered,
        stage.args,
      );
      await init();
      loaded = { run, error: null };
    } catch (error) {
      loaded = { run: null, error };
    }
    this.#loaded.set(stage.key, loaded);
    if (this.#loaded.size > HostWorker.KEPT) {
      this.#loaded.delete(this.#loaded.keys().next().value!);
    }
  }

  /**
   * Takes over `putResult()`: a task's results go into its answer, not to
   * this worker's own output (installed once, after the worker runtime's).
   */
  #installSink(): void {
    if (this.#sinkInstalled) return;
    this.#sinkInstalled = true;
    (globalThis as Record<symbol, unknown>)[Symbol.for("mpipe.putResult")] = (
      result: unknown,
    ) => {
      if (!this.#putOpen) {
        throw new Error(
          "putResult() was called after an await in a remote stage with concurrency above 1, where it cannot tell which task it belongs to: return the result from doTask() instead, or call putResult() before the first await",
        );
      }
      (this.#put ??= []).push(result);
    };
  }
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && typeof value === "object" &&
    typeof (value as { then?: unknown }).then === "function";
}
