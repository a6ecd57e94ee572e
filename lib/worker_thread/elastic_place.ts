/**
 * A worker's place in an elastic stage (`size` given as `{ min, max }`): when
 * an idle worker leaves, how it leaves without stopping the stage, and how a
 * worker that passes the stop on ends the places no worker holds.
 *
 * Every place is wired when the pipeline is built (its output rings exist
 * whether a worker holds it or not), so a worker that joins needs no new
 * rings, and the links downstream count every place's ring as today. A
 * leaving worker holds no task and has published all it wrote: its place is
 * parked (`StageStatus.PARKED`) with its rings open, for a later worker. At
 * the stop, each place's rings must carry one stop record: a held place's
 * worker writes its own; the parked ones are stopped by a worker that passes
 * the stop on, which changes them from PARKED to STOPPED first, so that the
 * main thread starting a worker there (PARKED to OPEN) and it never both win.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import { ClaimPolicy } from "../shared_memory/claim_policy.ts";
import { type Branch, LinkWriter } from "../shared_memory/link_writer.ts";
import { Ring } from "../shared_memory/ring.ts";
import type { LinkReader } from "../shared_memory/link_reader.ts";
import { StageStatus } from "../shared_memory/status.ts";
import type { WorkerFigures } from "./figures.ts";
import { WorkerScope } from "./scope.ts";

/** What a worker of an elastic stage knows of it. */
export interface ElasticConfig {
  /** The fewest workers. */
  min: number;
  /** Ms a worker waits for tasks before it leaves. */
  idleMs: number;
  /** The output branches of each of the stage's places (see `stopParked`). */
  places: Branch[][];
}

/** One worker's place in an elastic stage. */
export class ElasticPlace {
  readonly idleMs: number;
  /**
   * The most tasks a claim takes now. A stage wired for several workers
   * (`ClaimPolicy.maxClaim`) claims as a lone worker does while it runs
   * one: an elastic stage is wired for its `max`.
   */
  maxClaim: number;
  readonly #wired: number;
  readonly #config: ElasticConfig;
  readonly #status: StageStatus;
  readonly #words: Int32Array;
  /** This place's state word. */
  readonly #place: number;
  /** How long the worker waited before it left, and whether it was asked to. */
  #idleFor = 0;
  #asked = false;

  /** The place of the worker of `config`, or null in a fixed stage. */
  static of(
    config: { elastic: ElasticConfig | null; index: number; maxClaim: number },
    status: StageStatus,
  ): ElasticPlace | null {
    const { elastic, index, maxClaim } = config;
    return elastic === null
      ? null
      : new ElasticPlace(elastic, status, index, maxClaim);
  }

  /**
   * Worker `index`'s place in a stage of `config`, whose workers were wired
   * to claim `maxClaim` tasks at most.
   */
  constructor(
    config: ElasticConfig,
    status: StageStatus,
    index: number,
    maxClaim: number,
  ) {
    this.maxClaim = this.#wired = maxClaim;
    this.idleMs = config.idleMs;
    this.#config = config;
    this.#status = status;
    this.#words = status.words;
    this.#place = status.at(index, StageStatus.PLACE);
  }

  /**
   * Whether this worker, idle for `idleFor` ms, leaves now: it has waited
   * `idleMs`, or the main thread asks for a worker of its stage (`SHED`),
   * and the stage keeps `min` workers. True takes it off the stage's count.
   */
  mayLeave(idleFor: number): boolean {
    const words = this.#words;
    const asked = Atomics.load(words, StageStatus.SHED) > 0;
    if (!asked && idleFor < this.idleMs) return false;
    for (;;) {
      const workers = Atomics.load(words, StageStatus.WORKERS);
      if (workers <= this.#config.min) return false;
      if (
        Atomics.compareExchange(
          words,
          StageStatus.WORKERS,
          workers,
          workers - 1,
        ) === workers
      ) break;
    }
    // Take the request, if it is still there (another worker may have).
    for (let shed; (shed = Atomics.load(words, StageStatus.SHED)) > 0;) {
      if (
        Atomics.compareExchange(words, StageStatus.SHED, shed, shed - 1) ===
          shed
      ) break;
    }
    this.#idleFor = idleFor;
    this.#asked = asked;
    return true;
  }

  /**
   * Between claims (it holds no task): whether this worker leaves, asked to
   * by the main thread (`SHED`); if not, its claims follow the stage's size
   * (`maxClaim`).
   */
  betweenClaims(): boolean {
    const words = this.#words;
    if (Atomics.load(words, StageStatus.SHED) > 0 && this.mayLeave(0)) {
      return true;
    }
    this.maxClaim = this.#wired === ClaimPolicy.SHARED &&
        Atomics.load(words, StageStatus.WORKERS) === 1
      ? ClaimPolicy.SOLE
      : this.#wired;
    return false;
  }

  /**
   * Parks the place of `worker`, which may leave (it holds no task), once
   * all it wrote is published, and tells the main thread. If the stop came
   * (its input stopped), a worker passing it on may have looked at this
   * place before it was parked: then the worker takes its place back
   * (false) and passes the stop on itself, unless another worker has
   * already stopped the place.
   */
  leave(
    worker: {
      figures: WorkerFigures;
      output: { publish(): void };
      input: LinkReader;
    },
  ): boolean {
    worker.figures.exiting(performance.now());
    worker.output.publish();
    const words = this.#words;
    Atomics.store(words, this.#place, StageStatus.PARKED);
    if (
      worker.input.stopped &&
      Atomics.compareExchange(
          words,
          this.#place,
          StageStatus.PARKED,
          StageStatus.OPEN,
        ) === StageStatus.PARKED
    ) {
      Atomics.add(words, StageStatus.WORKERS, 1);
      return false;
    }
    WorkerScope.post({
      type: "left",
      idleMs: this.#idleFor,
      asked: this.#asked,
    });
    return true;
  }

  /**
   * Stops the rings of the stage's parked places, as their workers would
   * have at the stop; returns how many it stopped. Call after passing the
   * stop on.
   */
  stopParked(): number {
    const words = this.#words;
    let stopped = 0;
    this.#config.places.forEach((branches, index) => {
      if (
        Atomics.compareExchange(
          words,
          this.#status.at(index, StageStatus.PLACE),
          StageStatus.PARKED,
          StageStatus.STOPPED,
        ) !== StageStatus.PARKED
      ) return;
      // The place's last worker published all it wrote before parking it.
      const writer = new LinkWriter(branches);
      writer.putEmpty(Ring.STOP, 0);
      writer.publish();
      stopped++;
    });
    return stopped;
  }
}
