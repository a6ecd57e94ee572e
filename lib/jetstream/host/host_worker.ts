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
 * Loaded by the host's pipeline as a module target (see `worker_host.ts`).
 *
 * @module
 */

import { type Run, TargetLoader } from "../../worker_thread/target_loader.ts";
import { UnorderedWorker } from "../../stage/worker.ts";
import {
  Decoder,
  Encoder,
  errorValue,
  FAILED,
  MANY,
  type MessageReader,
  MessageWriter,
  NONE,
  ONE,
  readBatch,
  writeAnswerHeader,
} from "../messages.ts";
import type { RemoteTarget } from "../../stage/cluster.ts";

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

/** How one task ended: its result (and those it put before), or its error. */
type Outcome =
  | { ok: true; value: unknown; puts: unknown[] | null }
  | { ok: false; error: unknown };

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
    const { from, count, token, reader } = readBatch(bytes);
    const answer = new MessageWriter(256 + bytes.length);
    writeAnswerHeader(answer, count, from, token, this.#worker, stage.host);
    const run = loaded.run;
    for (let i = 0; i < count; i++) {
      let value: unknown;
      let ok = true;
      this.#put = null;
      this.#putOpen = true;
      try {
        const task = reader.record(this.#decoder);
        if (run === null) throw loaded.error;
        value = run(task);
      } catch (error) {
        value = error;
        ok = false;
      }
      if (ok && isThenable(value)) {
        return this.#runAsync(run!, reader, count - i, value, stage)
          .then((outcomes) => {
            for (const outcome of outcomes) this.#write(answer, outcome);
            return [id, answer.take()];
          });
      }
      this.#write(
        answer,
        ok ? { ok, value, puts: this.#put } : { ok, error: value },
      );
    }
    this.#putOpen = false;
    this.#put = null;
    return [id, answer.take()];
  }

  /**
   * Runs the rest of a batch once a task returned a Promise (`first`): one
   * task at a time, or up to the stage's concurrency at once (then
   * `putResult()` works only before a task's first await). Returns the
   * `left` tasks' outcomes, in task order.
   */
  async #runAsync(
    run: Run,
    reader: MessageReader,
    left: number,
    first: PromiseLike<unknown>,
    stage: HostStage,
  ): Promise<Outcome[]> {
    const outcomes: Outcome[] = new Array(left);
    // `puts`: the results the task put, taken after its synchronous part
    // when several run at once; else whatever it puts until it settles.
    const settle = async (
      index: number,
      value: unknown,
      puts?: unknown[] | null,
    ) => {
      try {
        const result = await value;
        outcomes[index] = {
          ok: true,
          value: result,
          puts: puts === undefined ? this.#put : puts,
        };
      } catch (error) {
        outcomes[index] = { ok: false, error };
      }
    };
    /** Starts the next task (its synchronous part); returns what it returned. */
    const start = (): { ok: boolean; value: unknown } => {
      this.#put = null;
      this.#putOpen = true;
      try {
        return { ok: true, value: run(reader.record(this.#decoder)) };
      } catch (error) {
        return { ok: false, value: error };
      }
    };
    if (stage.concurrency <= 1) {
      await settle(0, first);
      for (let i = 1; i < left; i++) {
        const { ok, value } = start();
        if (ok) await settle(i, value);
        else outcomes[i] = { ok: false, error: value };
      }
      this.#putOpen = false;
      this.#put = null;
      return outcomes;
    }
    // Several at once: each task's synchronous part runs alone, then its
    // Promise joins the others in flight.
    this.#putOpen = false;
    let next = 1;
    const lane = async () => {
      while (next < left) {
        const index = next++;
        const { ok, value } = start();
        this.#putOpen = false;
        if (ok) await settle(index, value, this.#put);
        else outcomes[index] = { ok: false, error: value };
      }
    };
    const lanes = [settle(0, first, this.#put).then(lane)];
    for (let i = 1; i < stage.concurrency; i++) lanes.push(lane());
    await Promise.all(lanes);
    this.#put = null;
    return outcomes;
  }

  /**
   * Writes one task's part of the answer. A result that cannot be encoded
   * (cloned) fails its task with the `DataCloneError`, as in a local stage.
   */
  #write(answer: MessageWriter, outcome: Outcome): void {
    if (outcome.ok) {
      const { value, puts } = outcome;
      const none = value === null || value === undefined;
      try {
        if (puts === null) {
          if (none) return answer.u8(NONE);
          const n = this.#encoder.encode(value);
          answer.u8(ONE);
          answer.frame(this.#encoder.bytes, 0, n);
          return;
        }
        const results = none ? puts : [...puts, value];
        const records = results.map((result) => {
          // Encode first: a long value grows the encoder's buffer.
          const length = this.#encoder.encode(result);
          return this.#encoder.bytes.slice(0, length);
        });
        answer.u8(MANY);
        answer.varint(records.length);
        for (const record of records) answer.frame(record);
        return;
      } catch (error) {
        return this.#write(answer, { ok: false, error });
      }
    }
    answer.u8(FAILED);
    answer.record(this.#encoder, errorValue(this.#encoder, outcome.error));
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
