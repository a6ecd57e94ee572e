/**
 * The shared memory of a pipeline, and what each worker is told about it.
 *
 * Allocation comes first, as soon as the stages are known: every stage's
 * status block, every link's control block and rings (one ring per producer),
 * the rings from leaf stages to the main thread, and those from a filter's
 * sub-pipelines back to the filter. The worker configs and the main thread's
 * leaf links come second, once every stage's ordering is known (a `Stage` of
 * a module target is inspected first), since ordering decides how a link
 * merges its rings.
 *
 * @module
 */

import { Arena, type ArenaMemory } from "../shared_memory/arena.ts";
import type { RetryConfig } from "../stage/retry_option.ts";
import { Bell } from "../shared_memory/bell.ts";
import { ClaimPolicy } from "../shared_memory/claim_policy.ts";
import type { FilterConfig } from "../worker_thread/filter_runtime.ts";
import { groupOf, leavesOf, producersOf, ringIndex } from "../stage/graph.ts";
import { LinkReader, type ReadMode } from "../shared_memory/link_reader.ts";
import type { Branch } from "../shared_memory/link_writer.ts";
import { Ring } from "../shared_memory/ring.ts";
import { type AnyStage, internalsOf, workersOf } from "../stage/internals.ts";
import { type FigureRef, StageStatus } from "../shared_memory/status.ts";
import type { ShippedTarget } from "../stage/target.ts";
import type { WorkerConfig } from "../worker_thread/config.ts";

/** The memory of one link: its control block and one ring per producer. */
export interface LinkMemory {
  control: SharedArrayBuffer;
  rings: SharedArrayBuffer[];
}

/**
 * A word a worker may sleep on, and how to wake it: a bell's counter is
 * bumped; a lock word is freed.
 */
export interface SleepWord {
  words: Int32Array;
  index: number;
  kind: "counter" | "lock";
}

/**
 * Ring buffers given back by pipelines that are done with them, for the next
 * pipelines to take. A service that makes a pipeline per request then reuses
 * a few rings instead of allocating new ones: a ring the main isolate drops
 * is freed only by a major GC, which shared memory does not bring on (V8
 * counts only its heap), and the allocator touches every page of a new ring
 * as it zeroes it, so dropped rings would pile up in resident memory.
 */
export class RingPool {
  /** The most bytes of rings kept for reuse; more are left to the GC. */
  static readonly MAX_BYTES = 32 * 2 ** 20;
  /** Free rings by data capacity. */
  readonly #free = new Map<number, SharedArrayBuffer[]>();
  #bytes = 0;

  /** Bytes of rings kept now. */
  get bytes(): number {
    return this.#bytes;
  }

  /** A ring of `capacity` data bytes: a reused one, reset, or a new one. */
  take(capacity: number): SharedArrayBuffer {
    const ring = this.#free.get(capacity)?.pop();
    if (ring === undefined) return Ring.allocate(capacity);
    this.#bytes -= ring.byteLength;
    // Only the control words matter: a reader reads no byte the producer
    // has not written since.
    new Int32Array(ring, 0, Ring.CONTROL_BYTES >> 2).fill(0);
    return ring;
  }

  /** Keeps `rings`, which nothing reads or writes any more, up to `MAX_BYTES`. */
  give(rings: readonly SharedArrayBuffer[]): void {
    for (const ring of rings) {
      if (this.#bytes + ring.byteLength > RingPool.MAX_BYTES) return;
      const capacity = ring.byteLength - Ring.CONTROL_BYTES;
      let free = this.#free.get(capacity);
      if (free === undefined) this.#free.set(capacity, free = []);
      free.push(ring);
      this.#bytes += ring.byteLength;
    }
  }
}

/** The main thread's ring pool, shared by every pipeline. */
export const ringPool: RingPool = new RingPool();

/** Every link's memory, and the worker configs and leaf links built on it. */
export class Wiring {
  /** The main thread's result bell: every leaf stage's workers ring it. */
  readonly resultBell: Int32Array = new Int32Array(new SharedArrayBuffer(16));
  /** The pipeline's failure word, which a worker that fails it raises (see `Dismissal.fail`). */
  readonly failureWord: Int32Array = new Int32Array(new SharedArrayBuffer(4));
  /** The root stage's input link, whose only producer is the main thread. */
  readonly rootLink: LinkMemory;
  /**
   * Every word a worker may sleep on. A worker blocked in `Atomics.wait`
   * ignores `Worker.terminate()` until woken, so killing workers is always
   * followed by waking all of them (see `Supervisor`).
   */
  readonly sleepWords: SleepWord[] = [];
  /** The pipeline's arena (null with `arenaBytes` 0), and each stage's first worker place in it. */
  readonly arena: ArenaMemory | null;
  readonly #holders = new Map<AnyStage, number>();
  readonly #ringBytes: number;
  /** Every ring allocated, for `release()`. */
  #rings: SharedArrayBuffer[] = [];
  /** Each stage's input link. */
  readonly #inputs = new Map<AnyStage, LinkMemory>();
  /** Each leaf's link to the main thread. */
  readonly #leafLinks = new Map<AnyStage, LinkMemory>();
  /** Each filter's links back from its sub-pipelines, one per sub-pipeline. */
  readonly #filterReturns = new Map<AnyStage, LinkMemory[]>();
  /**
   * The link each leaf stage of a filter's sub-pipeline writes to, and the
   * bell it rings: the space bell of the sub-pipeline's input ring, which the
   * filter sleeps on while it waits for room there (see `FilterRuntime`).
   */
  readonly #subLeafLinks = new Map<
    AnyStage,
    LinkMemory & { bell: SharedArrayBuffer }
  >();

  /**
   * Allocates the memory of `stages` (root first), whose pipeline leaves are
   * `leaves`, with rings of `ringBytes` bytes.
   */
  constructor(
    stages: AnyStage[],
    leaves: AnyStage[],
    ringBytes: number,
    arena: { bytes: number; debug: boolean },
  ) {
    this.#ringBytes = ringBytes;
    let holders = 0;
    for (const stage of stages) {
      this.#holders.set(stage, holders);
      holders += workersOf(stage);
    }
    this.arena = arena.bytes === 0
      ? null
      : Arena.create(arena.bytes, holders, arena.debug);
    if (this.arena !== null) {
      this.sleepWords.push({
        words: new Int32Array(this.arena.buffer, 0, 1),
        index: Arena.LOCK,
        kind: "lock",
      });
    }
    for (const stage of stages) {
      const state = internalsOf(stage);
      // A worker of several tasks at once, or one that retries, keeps the
      // exact set it holds in a table (see StageStatus.HELD).
      const concurrency = concurrencyOf(stage);
      const status = state.status = new StageStatus(
        StageStatus.allocate(
          workersOf(stage),
          producersOf(stage),
          concurrency > 1 || retryOf(stage) !== null ? concurrency : 0,
        ),
        workersOf(stage),
      );
      // An elastic stage starts `min` workers; its other places wait,
      // parked, their rings wired all the same (see `Supervisor.grow`).
      const min = elasticOf(stage)?.min;
      if (min !== undefined) {
        status.words[StageStatus.WORKERS] = min;
        for (let i = min; i < workersOf(stage); i++) {
          status.words[status.at(i, StageStatus.PLACE)] = StageStatus.PARKED;
        }
      }
      this.#inputs.set(
        stage,
        this.#link(Math.max(1, state.previous.length), producersOf(stage)),
      );
    }
    for (const leaf of leaves) {
      this.#leafLinks.set(leaf, this.#link(1, workersOf(leaf)));
    }
    for (const stage of stages) {
      const filter = internalsOf(stage).filter;
      if (filter === null) continue;
      this.#filterReturns.set(
        stage,
        filter.stages.map((root) => {
          const subLeaves = leavesOf(root);
          const back = this.#link(
            subLeaves.length,
            subLeaves.reduce((sum, leaf) => sum + workersOf(leaf), 0),
          );
          const bell = this.#inputs.get(root)!.rings[0]!;
          let ring = 0;
          for (const leaf of subLeaves) {
            this.#subLeafLinks.set(leaf, {
              control: back.control,
              rings: back.rings.slice(ring, ring += workersOf(leaf)),
              bell,
            });
          }
          return back;
        }),
      );
    }
    this.rootLink = this.#inputs.get(stages[0]!)!;
  }

  /**
   * The configs of `stage`'s workers, in worker order. Call once every
   * stage's ordering is known.
   */
  workerConfigs(stage: AnyStage, spin: number): WorkerConfig[] {
    const state = internalsOf(stage);
    const input = this.#inputs.get(stage)!;
    const mode = inputMode(stage);
    const leafLink = this.#leafLinks.get(stage);
    const subLeafLink = this.#subLeafLinks.get(stage);
    const holdOne = state.restart || Number.isFinite(state.taskTimeout);
    const filter = this.#filterConfig(stage);
    // A remote stage runs one stand-in worker that keeps `size` tasks in
    // flight on its cluster (see stage/cluster.ts).
    const standIn = state.standIn;
    const target: ShippedTarget = standIn === null ? state.shipped : {
      kind: "module",
      specifier: standIn.module,
      exportName: "default",
    };
    const places = Array.from({ length: workersOf(stage) }, (_, index) => {
      const outputs = state.next.map((next) => {
        const target = this.#inputs.get(next)!;
        const ring = ringIndex(next, stage, index);
        return linkBranch(
          target.control,
          target.rings[ring]!,
          internalsOf(next).maxBacklog,
          nextSeqWord(next, stage),
          stageFigure(next, StageStatus.FULL_MS + ring),
        );
      });
      if (leafLink !== undefined) {
        outputs.push({
          ring: leafLink.rings[index]!,
          bell: this.resultBell.buffer as SharedArrayBuffer,
          bellBase: 0,
          link: leafLink.control,
          maxBacklog: 0,
          nextSeqWord: -1,
        });
      } else if (subLeafLink !== undefined) {
        outputs.push({
          ring: subLeafLink.rings[index]!,
          bell: subLeafLink.bell,
          bellBase: Ring.SPACE_BELL,
          link: subLeafLink.control,
          maxBacklog: 0,
          nextSeqWord: -1,
        });
      }
      return outputs;
    });
    const elastic = elasticOf(stage);
    return places.map((outputs, index) => {
      return {
        stage: stage.name,
        index,
        target,
        ordered: state.ordered!,
        args: standIn?.args ?? state.args,
        disableResult: state.disableResult,
        doStopTask: state.doStopTask,
        input: { control: input.control, rings: input.rings, mode },
        outputs,
        spin,
        onError: typeof state.onError === "function" ? "report" : state.onError,
        failure: this.failureWord.buffer as SharedArrayBuffer,
        status: state.status!.buffer,
        size: workersOf(stage),
        timed: Number.isFinite(state.taskTimeout),
        maxClaim: ClaimPolicy.maxClaim(workersOf(stage), holdOne),
        concurrency: concurrencyOf(stage),
        taskTimeout: state.taskTimeout,
        spawnedAt: 0,
        generation: 0,
        recover: null,
        retry: retryOf(stage),
        filter,
        elastic: elastic === null ? null : { ...elastic, places },
        arena: this.arena === null
          ? null
          : { memory: this.arena, holder: this.#holders.get(stage)! + index },
      };
    });
  }

  /** `stage`'s input link: its control block and rings. */
  inputOf(stage: AnyStage): LinkMemory {
    return this.#inputs.get(stage)!;
  }

  /**
   * Where `stage`'s places write: every ring they own, and the control
   * blocks of the links downstream that bound their backlog, with the bound.
   */
  outputsOf(stage: AnyStage): {
    rings: SharedArrayBuffer[];
    backlogs: { control: SharedArrayBuffer; max: number }[];
  } {
    const state = internalsOf(stage);
    const places = Array.from({ length: workersOf(stage) }, (_, i) => i);
    const rings = state.next.flatMap((next) =>
      places.map((i) =>
        this.#inputs.get(next)!.rings[ringIndex(next, stage, i)]!
      )
    );
    const leaf = this.#leafLinks.get(stage) ?? this.#subLeafLinks.get(stage);
    if (leaf !== undefined) rings.push(...places.map((i) => leaf.rings[i]!));
    const backlogs = state.next
      .filter((next) => Number.isFinite(internalsOf(next).maxBacklog))
      .map((next) => ({
        control: this.#inputs.get(next)!.control,
        max: internalsOf(next).maxBacklog,
      }));
    return { rings, backlogs };
  }

  /** The main thread's link from leaf `stage`. Call once every stage's ordering is known. */
  leafLink(stage: AnyStage): LinkReader {
    const { control, rings } = this.#leafLinks.get(stage)!;
    const mode: ReadMode = {
      shared: false,
      groups: [groupOf(stage)],
      bounded: false,
      blocking: false,
    };
    return new LinkReader(control, rings, mode, {
      words: this.resultBell,
      base: 0,
    });
  }

  /**
   * A filter's wiring to its sub-pipelines: the filter's worker is the only
   * producer of each sub-pipeline's root, and the only consumer of the link
   * its leaves write to.
   */
  #filterConfig(stage: AnyStage): FilterConfig | null {
    const filter = internalsOf(stage).filter;
    if (filter === null) return null;
    const returns = this.#filterReturns.get(stage)!;
    return {
      maxTasks: filter.maxTasks,
      dropResults: filter.dropResults,
      cacheResults: filter.cacheResults,
      doStopTask: filter.doStopTask,
      subs: filter.stages.map((root, i) => {
        const rootLink = this.#inputs.get(root)!;
        return {
          input: linkBranch(
            rootLink.control,
            rootLink.rings[0]!,
            internalsOf(root).maxBacklog,
            -1,
            stageFigure(root, StageStatus.FULL_MS),
          ),
          received: stageFigure(root, StageStatus.RECEIVED),
          output: {
            control: returns[i]!.control,
            rings: returns[i]!.rings,
            mode: {
              shared: false,
              groups: leavesOf(root).map(groupOf),
              bounded: false,
              blocking: true,
            },
          },
        };
      }),
    };
  }

  /**
   * Gives every ring back to the pool, and forgets them and their sleep
   * words. Call only once nothing will read or write them again: every
   * worker exited after passing the stop on, the main thread read every
   * leaf ring to its end, and the input will write nothing more (its stop
   * request was written, and the run is not cut short afterwards).
   */
  release(): void {
    const rings = new Set<ArrayBufferLike>(this.#rings);
    const kept = this.sleepWords.filter((word) =>
      !rings.has(word.words.buffer)
    );
    this.sleepWords.splice(0, this.sleepWords.length, ...kept);
    ringPool.give(this.#rings);
    this.#rings = [];
    this.rootLink.rings.length = 0;
    this.#inputs.clear();
    this.#leafLinks.clear();
    this.#filterReturns.clear();
    this.#subLeafLinks.clear();
  }

  /**
   * Allocates a link fed by `groups` upstream stages through `producers`
   * rings, and records the words a worker may sleep on in it.
   */
  #link(groups: number, producers: number): LinkMemory {
    const control = new SharedArrayBuffer(LinkReader.bytes(groups));
    const words = new Int32Array(control);
    this.sleepWords.push(
      { words, index: LinkReader.BELL + Bell.COUNTER, kind: "counter" },
      { words, index: LinkReader.LOCK, kind: "lock" },
      { words, index: LinkReader.SPACE_BELL + Bell.COUNTER, kind: "counter" },
    );
    const rings = Array.from({ length: producers }, () => {
      const ring = ringPool.take(this.#ringBytes);
      this.#rings.push(ring);
      this.sleepWords.push({
        words: new Int32Array(ring, 0, Ring.CONTROL_BYTES >> 2),
        index: Ring.SPACE_BELL + Bell.COUNTER,
        kind: "counter",
      });
      return ring;
    });
    return { control, rings };
  }
}

/**
 * A producer's branch into a stage's input link, whose control block is also
 * the consumers' doorbell; an unbounded backlog (Infinity) is sent as 0.
 */
function linkBranch(
  control: SharedArrayBuffer,
  ring: SharedArrayBuffer,
  maxBacklog: number,
  nextSeqWord: number,
  fullMs: FigureRef,
): Branch {
  return {
    ring,
    bell: control,
    bellBase: LinkReader.BELL,
    link: control,
    maxBacklog: Number.isFinite(maxBacklog) ? maxBacklog : 0,
    nextSeqWord,
    fullMs,
  };
}

/** `stage`'s elastic settings, or null for a fixed size or a remote stage. */
function elasticOf(stage: AnyStage): { min: number; idleMs: number } | null {
  const state = internalsOf(stage);
  return state.standIn === null ? state.elastic : null;
}

/**
 * The retry policy `stage`'s workers apply, or null for a stage that does
 * not retry. A remote stage's stand-in applies it too: it sends a task that
 * failed on a host again.
 */
function retryOf(stage: AnyStage): RetryConfig | null {
  const state = internalsOf(stage);
  return state.retry.attempts > 1 ? state.retry : null;
}

/**
 * The most tasks each of `stage`'s workers runs at once: its `concurrency`,
 * or a remote stage's size, which its one stand-in worker keeps in flight.
 */
function concurrencyOf(stage: AnyStage): number {
  const state = internalsOf(stage);
  return state.standIn === null ? state.concurrency : stage.size;
}

/** Stage figure `figure` of `stage`, for the one thread that writes it. */
function stageFigure(stage: AnyStage, figure: number): FigureRef {
  return {
    buffer: internalsOf(stage).status!.buffer,
    index: internalsOf(stage).status!.stageFigureIndex(figure),
  };
}

/** How `stage`'s workers read their input link. */
function inputMode(stage: AnyStage): ReadMode {
  const state = internalsOf(stage);
  return {
    shared: workersOf(stage) > 1,
    groups: state.previous.length === 0
      ? [{ size: 1, merge: false }]
      : state.previous.map(groupOf),
    bounded: Number.isFinite(state.maxBacklog),
    blocking: true,
  };
}

/** The NEXT_SEQ word `stage`'s group has in `next`'s link, if that group is merged; else -1. */
function nextSeqWord(next: AnyStage, stage: AnyStage): number {
  const group = internalsOf(next).previous.indexOf(stage);
  return groupOf(stage).merge
    ? LinkReader.groupWord(group, LinkReader.NEXT_SEQ)
    : -1;
}
