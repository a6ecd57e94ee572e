/**
 * The main thread's side of the pipeline's arena: `alloc`, `allocSync` and
 * `free`, and the arena's figures. A buffer the main thread holds (allocated,
 * or a result it read) is its own until it puts or frees it.
 *
 * @module
 */

import { Arena, type ArenaMemory } from "../shared_memory/arena.ts";
import { ArenaFullError, PipelineClosedError } from "../errors.ts";
import type { RunView } from "./run_state.ts";

/**
 * The arena's figures, in `PipelineStats.arena`.
 *
 * @example Watch buffers come back
 * ```ts
 * import { type ArenaStats, OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const pipe = new Pipeline(new OrderedStage((b: Uint8Array) => b.length));
 * pipe.put(pipe.allocSync(10_000));
 * pipe.put(null);
 * assert.deepEqual(await Array.fromAsync(pipe), [10_000]);
 * const arena: ArenaStats = pipe.stats().arena;
 * assert.equal(arena.live, 0); // the task returned: its buffer came back
 * assert.equal(arena.highBytes, 12_288); // three blocks of 4096 bytes
 * ```
 */
export interface ArenaStats {
  /** Bytes the arena holds at most (`arenaBytes`). */
  capacity: number;
  /** Bytes in use now (in blocks of 4096 bytes). */
  usedBytes: number;
  /** The most bytes in use at once. */
  highBytes: number;
  /** Buffers live now. */
  live: number;
  /** Buffers allocated in all (`alloc`, `this.alloc`, `put` with `transfer`). */
  allocations: number;
  /** Worker `alloc` calls the arena had no room for, given an ordinary `Uint8Array`. */
  fallbacks: number;
  /**
   * References a worker held beyond its table of 1,024: if that worker is
   * lost, their space is not given back until the pipeline is dropped.
   * Hold fewer buffers at once in one worker when this is not 0.
   */
  untracked: number;
}

/** The main thread's arena calls. */
export class ArenaAccess {
  /** The main thread's view of the arena, or null with `arenaBytes` 0. */
  readonly arena: Arena | null;
  readonly #run: RunView;

  constructor(memory: ArenaMemory | null, run: RunView) {
    this.arena = memory === null ? null : new Arena(memory, -1);
    this.#run = run;
  }

  /** See `Pipeline.allocSync`. */
  allocSync(n: number): Uint8Array {
    const arena = this.#check(n, "allocSync");
    const view = arena.tryAlloc(n);
    if (view !== null) return view;
    const used = arena.header[Arena.USED]! * Arena.BLOCK;
    throw new ArenaFullError(
      `allocSync: the pipeline's arena has no room for ${n} bytes now (${used} of ${arena.capacity} bytes in use): free the buffers the program holds (pipe.free), read results, wait for room with await pipe.alloc(), or raise the pipeline option arenaBytes`,
      n,
    );
  }

  /** See `Pipeline.alloc`. */
  async alloc(n: number, signal: AbortSignal | undefined): Promise<Uint8Array> {
    const arena = this.#check(n, "alloc");
    const header = arena.header;
    for (;;) {
      signal?.throwIfAborted();
      this.#checkOpen(n);
      // Say we wait before the last look, so a free after it wakes us.
      Atomics.add(header, Arena.WAITERS, 1);
      try {
        const counter = Atomics.load(header, Arena.FREED);
        const view = arena.tryAlloc(n);
        if (view !== null) return view;
        const wait = Atomics.waitAsync(header, Arena.FREED, counter);
        if (signal === undefined) await wait.value;
        else {
          let onAbort = () => {};
          await Promise.race([
            wait.value,
            new Promise((resolve) => {
              onAbort = () => resolve(undefined);
              signal.addEventListener("abort", onAbort, { once: true });
            }),
          ]);
          signal.removeEventListener("abort", onAbort);
        }
      } finally {
        Atomics.sub(header, Arena.WAITERS, 1);
      }
    }
  }

  /** See `Pipeline.free`. */
  free(view: ArrayBufferView): void {
    const arena = this.arena;
    // An ordinary array (a worker's alloc that found no room) is the GC's.
    if (ArrayBuffer.isView(view) && view.buffer instanceof ArrayBuffer) return;
    if (
      arena === null || !ArrayBuffer.isView(view) ||
      view.buffer !== arena.buffer
    ) {
      throw new TypeError(
        `free: 'view' must be a buffer on this pipeline's arena (from alloc, allocSync or a result), got ${
          Object.prototype.toString.call(view)
        }`,
      );
    }
    const start = arena.startOf(view);
    if (start < 0 || !arena.owns(start)) {
      throw new TypeError(
        "free: 'view' was put or freed already: a buffer given up cannot be freed again",
      );
    }
    arena.release(start);
  }

  /** The pipeline ended (by its stop, a failure or terminate()): no more allocations, and waiting ones reject. */
  close(): void {
    this.arena?.close();
  }

  /** The arena's figures (zeros with no arena). */
  stats(): ArenaStats {
    const header = this.arena?.header;
    const word = (index: number) =>
      header === undefined ? 0 : Atomics.load(header, index);
    return {
      capacity: this.arena?.capacity ?? 0,
      usedBytes: word(Arena.USED) * Arena.BLOCK,
      highBytes: word(Arena.HIGH) * Arena.BLOCK,
      live: word(Arena.LIVE),
      allocations: word(Arena.ALLOCATIONS),
      fallbacks: word(Arena.FALLBACKS),
      untracked: word(Arena.UNTRACKED),
    };
  }

  #check(n: number, call: string): Arena {
    const arena = this.arena;
    if (arena === null) {
      throw new TypeError(
        `${call}: this pipeline has no arena (its option arenaBytes is 0): give it arenaBytes`,
      );
    }
    if (
      typeof n !== "number" || !Number.isInteger(n) || n < 0 ||
      n > arena.capacity
    ) {
      throw new RangeError(
        `${call}: 'n' must be an integer from 0 to the arena's ${arena.capacity} bytes (the pipeline option arenaBytes), got ${
          String(n)
        }`,
      );
    }
    this.#checkOpen(n);
    return arena;
  }

  #checkOpen(n: number): void {
    const run = this.#run;
    // Closed also once the run ended by its stop (see `Pipeline` done).
    const closed = this.arena !== null &&
      Atomics.load(this.arena.header, Arena.CLOSED) !== 0;
    if (run.failure !== null || run.terminated || closed) {
      throw new PipelineClosedError(
        "The pipeline ended: its arena takes no more allocations",
        n,
      );
    }
  }
}
