/**
 * A stage's worker places, as the main thread keeps them: which worker
 * generation holds each, when workers held it, how many places are not done
 * yet, and an elastic stage's size (now, lowest, highest). The supervisor
 * writes it as workers start, exit, leave and are replaced; `stats()` reads
 * it.
 *
 * @module
 */

import { StageStatus } from "../shared_memory/status.ts";
import type { WorkerConfig } from "../worker_thread/config.ts";

/** When a worker held a place: from `startMs` to `endMs` (null while it does), as `performance.now()`. */
export interface PlaceSpan {
  startMs: number;
  endMs: number | null;
}

/** One stage's places. */
export class StagePlaces {
  /** Each place's config, as the pipeline was built. */
  readonly configs: readonly WorkerConfig[];
  /** When each place's workers held it. */
  readonly spans: PlaceSpan[][];
  /** Places not done: their rings have not all carried the stop on yet. */
  left: number;
  /** Workers holding a place (joined and not left; those that exit at the stop still count). */
  size: number;
  lowest: number;
  highest: number;
  /** Each place's latest worker's generation. */
  readonly #generations: number[];

  /** The places of a stage of `configs`, `open` of them held from the start. */
  constructor(configs: readonly WorkerConfig[], open: number) {
    this.configs = configs;
    this.spans = configs.map(() => []);
    this.#generations = configs.map(() => 0);
    this.left = configs.length;
    this.size = this.lowest = this.highest = open;
  }

  /** A worker of `config` starts in its place (a replacement goes on in its place's span). */
  started(config: WorkerConfig): void {
    this.#generations[config.index] = config.generation;
    const spans = this.spans[config.index]!;
    if (spans.at(-1)?.endMs !== null) {
      spans.push({ startMs: performance.now(), endMs: null });
    }
  }

  /** Place `index`'s worker is gone for good (exited, left or killed). */
  ended(index: number): void {
    const span = this.spans[index]!.at(-1);
    if (span !== undefined && span.endMs === null) {
      span.endMs = performance.now();
    }
  }

  /** A worker joined (1) or left (-1). */
  resized(by: number): void {
    this.size += by;
    this.lowest = Math.min(this.lowest, this.size);
    this.highest = Math.max(this.highest, this.size);
  }

  /**
   * Opens a parked place of the stage whose status is `status`, for a new
   * worker: its config, or null if none is parked (or they are being stopped:
   * the stop came). The compare-exchange races a stopping worker that ends
   * parked places (`ElasticPlace.stopParked`): one of them wins.
   */
  open(status: StageStatus): WorkerConfig | null {
    const words = status.words;
    for (let index = 0; index < this.configs.length; index++) {
      if (
        Atomics.compareExchange(
          words,
          status.at(index, StageStatus.PLACE),
          StageStatus.PARKED,
          StageStatus.OPEN,
        ) !== StageStatus.PARKED
      ) continue;
      Atomics.add(words, StageStatus.WORKERS, 1);
      const generation = this.#generations[index]! + 1;
      // Its previous worker, if still there, never writes again; the new one
      // starts with no timed task running.
      Atomics.store(words, status.at(index, StageStatus.KILL), generation);
      Atomics.store(
        words,
        status.at(index, StageStatus.TASK_STATE),
        StageStatus.taskState(generation, StageStatus.IDLE),
      );
      this.resized(1);
      return { ...this.configs[index]!, generation, recover: null };
    }
    return null;
  }
}
