/**
 * A worker's side of its stage's `retry` option: which failed attempts are
 * tried again and after how long, and the stash of the tasks it holds.
 *
 * A task may be retried after its worker is lost, by the worker that takes
 * its place; by then the ring no longer has the task. So a worker of a stage
 * that retries claims each task as it is encoded, keeps the bytes in a
 * stash of shared memory (one buffer for each place of its held table, with
 * the attempt running), and decodes them afresh for each attempt: an attempt
 * never sees what an earlier one did to its task. The main thread reads the
 * stash of a lost worker (`Retries.read`). A stash buffer that must grow is
 * replaced, and sent to the main thread: a message per growth, not per task.
 *
 * Only a stage with `retry` pays for this: without it, a worker claims and
 * decodes as before, and this class is not used.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import { Decoder } from "../shared_memory/codec.ts";
import type { RawRecords } from "../shared_memory/link_reader.ts";
import type { RetryConfig } from "../stage/retry_option.ts";
import { WorkerScope } from "./scope.ts";

/** A worker's retry policy and stash. */
export class Retries {
  /**
   * Bytes before a stashed task's record: its length, its attempt (the one
   * running, or next), and its state: 1 while its synchronous part runs, 2
   * while none of its code runs (it waits for its retry, or it has settled
   * and its result waits for its turn), else 0 (Int32 each, then padding).
   */
  static readonly HEADER = 16;
  /** The attempt word of a place whose task the worker only closes (it was dropped). */
  static readonly CLOSED = -1;
  /** setTimeout's longest delay, in ms. */
  static readonly LONGEST = 2 ** 31 - 1;
  /** What `decide` returns for an attempt to be tried again. */
  static readonly AGAIN: unique symbol = Symbol("again");

  readonly config: RetryConfig;
  readonly #when: ((error: unknown, attempt: number) => unknown) | null;
  readonly #decoder = new Decoder();
  /** The stash buffer of each held place, with its Int32 view. */
  readonly #stash: { bytes: Uint8Array; words: Int32Array }[] = [];
  /** The records of the last claim, copied (see `raw`). */
  readonly records: Uint8Array[] = [];
  /** Where `InputLink.claimRaw` puts a claim's records. */
  readonly raw: RawRecords;

  constructor(config: RetryConfig) {
    this.config = config;
    this.#when = config.when === null
      ? null
      : (0, eval)(`(${config.when}\n)`) as (
        error: unknown,
        attempt: number,
      ) => unknown;
    const records = this.records;
    this.raw = {
      add(bytes, start, length) {
        records.push(bytes.slice(start, start + length));
      },
    };
  }

  /**
   * The ms to wait before attempt `attempt + 1`, after attempt `attempt`
   * failed: `delayMs` grown by `factor` each retry, at most `maxDelayMs`,
   * then moved by up to `jitter` of it either way (`random` in [0, 1)); at
   * most setTimeout's longest delay (2^31 - 1 ms, 24.8 days), as a longer
   * one would fire at once.
   */
  static delayMs(
    config: RetryConfig,
    attempt: number,
    random: number = Math.random(),
  ): number {
    const base = Math.min(
      config.maxDelayMs,
      config.delayMs * config.factor ** (attempt - 1),
    );
    return Math.min(
      Retries.LONGEST,
      Math.max(0, base * (1 + config.jitter * (2 * random - 1))),
    );
  }

  /**
   * Whether attempt `attempt`, which failed with `error`, is tried again:
   * `Retries.AGAIN`, or the task's final error (`error`, or what `when`
   * threw). A remote stage's stand-in fails a task with where it ran
   * (`RemoteFailure`): `when` gets the error thrown there, and what it
   * throws keeps the where.
   */
  decide(error: unknown, attempt: number): unknown {
    if (attempt >= this.config.attempts) return error;
    if (this.#when === null) return Retries.AGAIN;
    const remote = typeof error === "object" && error !== null &&
        "mpipeRemote" in error
      ? error as { mpipeRemote: unknown; error: unknown }
      : null;
    try {
      return this.#when(remote === null ? error : remote.error, attempt)
        ? Retries.AGAIN
        : error;
    } catch (thrown) {
      return remote === null
        ? thrown
        : { mpipeRemote: remote.mpipeRemote, error: thrown };
    }
  }

  /** Decodes a stashed task afresh, for an attempt. */
  decode(bytes: Uint8Array): unknown {
    return this.#decoder.decode(bytes, new DataView(bytes.buffer), 0);
  }

  /** Keeps task `record` at held place `place`, at attempt `attempt` (or CLOSED). */
  stash(place: number, record: Uint8Array, attempt: number): void {
    let slot = this.#stash[place];
    const needed = Retries.HEADER + record.length;
    if (slot === undefined || slot.bytes.length < needed) {
      const size = Math.max(needed, 2 * (slot?.bytes.length ?? 0), 1024);
      const buffer = new SharedArrayBuffer((size + 3) & ~3);
      slot = { bytes: new Uint8Array(buffer), words: new Int32Array(buffer) };
      this.#stash[place] = slot;
      WorkerScope.post({ type: "stash", place, buffer });
    }
    slot.words[0] = record.length;
    slot.words[1] = attempt;
    slot.words[2] = 0;
    slot.bytes.set(record, Retries.HEADER);
  }

  /**
   * The task at `place` enters or leaves its synchronous part: a worker lost
   * meanwhile was lost by that task alone (see `read`).
   */
  running(place: number, running: boolean): void {
    this.#stash[place]!.words[2] = running ? 1 : 0;
  }

  /**
   * None of the task at `place`'s code runs: it waits for its retry, or it
   * has settled and its result waits for its turn to be written (an ordered
   * stage's later tasks wait for an earlier one). A worker lost meanwhile was
   * not lost by it (see `read`).
   */
  idle(place: number): void {
    this.#stash[place]!.words[2] = 2;
  }

  /** The task at `place` runs attempt `attempt` now. */
  attempt(place: number, attempt: number): void {
    this.#stash[place]!.words[1] = attempt;
  }

  /**
   * A lost worker's stashed task: its record (a copy), the attempt it ran,
   * or was to run next, and whether the worker was lost in its synchronous
   * part, or while it was idle; null if it was only to be closed.
   */
  static read(
    buffer: SharedArrayBuffer,
  ): {
    record: Uint8Array;
    attempt: number;
    running: boolean;
    idle: boolean;
  } | null {
    const words = new Int32Array(buffer, 0, 3);
    if (words[1] === Retries.CLOSED) return null;
    return {
      record: new Uint8Array(buffer).slice(
        Retries.HEADER,
        Retries.HEADER + words[0]!,
      ),
      attempt: words[1]!,
      running: words[2] === 1,
      idle: words[2] === 2,
    };
  }
}
