/**
 * What a `FilterStage`'s worker runs instead of a target: it feeds its
 * sub-pipelines and collects their results, as the only producer of each
 * sub-pipeline's root and the only consumer of its leaves.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import type { Arena } from "../shared_memory/arena.ts";
import { ClaimPolicy } from "../shared_memory/claim_policy.ts";
import { LinkReader, type ReadMode } from "../shared_memory/link_reader.ts";
import { type Branch, LinkWriter } from "../shared_memory/link_writer.ts";
import { Ring } from "../shared_memory/ring.ts";
import type { FigureRef } from "../shared_memory/status.ts";

/** What the filter's worker is told: its settings and its sub-pipelines' links. */
export interface FilterConfig {
  maxTasks: number;
  dropResults: boolean;
  cacheResults: boolean;
  doStopTask: boolean;
  subs: {
    /** The ring into the sub-pipeline's root stage. */
    input: Branch;
    /** The root's count of the tasks passed in (`StageStatus.RECEIVED`), written by the filter alone. */
    received: FigureRef;
    /** The rings from the sub-pipeline's leaf stages. */
    output: {
      control: SharedArrayBuffer;
      rings: SharedArrayBuffer[];
      mode: ReadMode;
    };
  }[];
}

/** The filter's logic in its worker. */
export class FilterRuntime {
  readonly config: FilterConfig;
  readonly inputs: LinkWriter[];
  readonly outputs: LinkReader[];
  /** Tasks put into each sub-pipeline, less results collected from it. */
  readonly counts: number[];
  /** Each sub-pipeline root's count of the tasks passed in, and where it is. */
  readonly received: Float64Array[];
  readonly receivedAt: number[];
  /** The latest result of each sub-pipeline (kept across tasks with cacheResults). */
  readonly latest: Map<number, unknown> = new Map();
  #values: unknown[] = [];
  #seqs: number[] = [];
  /** The pipeline's arena, and the references each kept result holds (see `#keep`). */
  readonly #arena: Arena | null;
  readonly #latestRefs = new Map<number, number[]>();

  constructor(config: FilterConfig, arena: Arena | null) {
    this.config = config;
    this.#arena = arena;
    this.counts = config.subs.map(() => 0);
    this.received = config.subs.map((sub) =>
      new Float64Array(sub.received.buffer)
    );
    this.receivedAt = config.subs.map((sub) => sub.received.index);
    this.inputs = config.subs.map((sub, i) => {
      const writer = new LinkWriter([sub.input]);
      // While a task waits for room in a sub-pipeline, collect what that
      // sub-pipeline returns: it may be waiting for room in the filter.
      writer.whileFull = () => this.#collect(i);
      if (arena !== null) writer.useArena(arena);
      return writer;
    });
    // The sub-pipeline's leaves ring the bell the filter sleeps on while it
    // waits for room in the sub-pipeline's input (see Wiring): one bell for
    // both, so either wakes it.
    this.outputs = config.subs.map((sub) => {
      const reader = new LinkReader(
        sub.output.control,
        sub.output.rings,
        sub.output.mode,
        {
          words: new Int32Array(sub.input.ring, 0, Ring.CONTROL_BYTES >> 2),
          base: Ring.SPACE_BELL,
        },
      );
      if (arena !== null) reader.useArena(arena);
      return reader;
    });
  }

  /**
   * The buffers on the arena of `taken` results just collected from
   * sub-pipeline `i`: the last one's are kept while it is the latest (with
   * `keep`), the others' go back at once.
   */
  #keep(i: number, taken: number, keep: boolean): void {
    const arena = this.#arena;
    if (arena === null) return;
    for (let k = 0; k < taken; k++) {
      const refs = arena.takeTask(this.#values[k]);
      if (keep && k === taken - 1) {
        const before = this.#latestRefs.get(i);
        if (before !== undefined) arena.releaseAll(before);
        if (refs === null) this.#latestRefs.delete(i);
        else this.#latestRefs.set(i, refs);
      } else if (refs !== null) arena.releaseAll(refs);
    }
  }

  /** The kept results are forgotten: their buffers go back. */
  #forgetLatest(): void {
    this.latest.clear();
    const arena = this.#arena;
    if (arena === null || this.#latestRefs.size === 0) return;
    for (const refs of this.#latestRefs.values()) arena.releaseAll(refs);
    this.#latestRefs.clear();
  }

  /** Collects from each sub-pipeline, feeds the task to those with room, and returns the filter's result. */
  doTask(task: unknown): unknown {
    const { maxTasks, dropResults, cacheResults } = this.config;
    if (!cacheResults) this.#forgetLatest();
    for (let i = 0; i < this.inputs.length; i++) {
      this.#collect(i);
      // A sub-pipeline whose root's backlog is full holds too many tasks too.
      if (
        this.counts[i]! < maxTasks && this.inputs[i]!.offer(task, Ring.DATA, 0)
      ) {
        // A plain store: the filter's worker alone writes it.
        this.received[i]![this.receivedAt[i]!]!++;
        this.inputs[i]!.publish();
        this.counts[i]!++;
      }
    }
    if (dropResults) return task;
    const results = [...this.latest.keys()].sort((a, b) => a - b).map((i) =>
      this.latest.get(i)
    );
    return [task, results];
  }

  /** Takes every result sub-pipeline `i` has returned so far. */
  #collect(i: number): void {
    for (;;) {
      const taken = this.outputs[i]!.claim(
        this.#values,
        this.#seqs,
        ClaimPolicy.FILTER_COLLECT,
      );
      if (taken <= 0) return;
      if (!this.config.dropResults) {
        this.latest.set(i, this.#values[taken - 1]);
      }
      this.#keep(i, taken, !this.config.dropResults);
      this.#values.length = 0;
      this.counts[i] = Math.max(0, this.counts[i]! - taken);
    }
  }

  /** Passes the stop to every sub-pipeline and takes their results until each has stopped. */
  stop(): void {
    for (const input of this.inputs) {
      input.putEmpty(Ring.STOP, 0);
      input.publish();
    }
    for (const output of this.outputs) {
      for (;;) {
        const counter = output.arm();
        const taken = output.claim(
          this.#values,
          this.#seqs,
          ClaimPolicy.FILTER_COLLECT,
        );
        if (taken > 0) this.#keep(0, taken, false);
        this.#values.length = 0;
        if (taken < 0) break;
        if (taken === 0) output.sleep(counter);
      }
    }
    this.#forgetLatest();
  }
}
