/**
 * A worker's side of the pipeline's arena: the buffers each task holds (those
 * that came with it, and those `this.alloc` made in it), given back when the
 * task ends, unless it put them on; and what a lost worker held before this
 * one took its place.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import { Arena, type ArenaMemory } from "../shared_memory/arena.ts";
import { Encoder } from "../shared_memory/codec.ts";
import { Dismissal } from "../shared_memory/dismissal.ts";
import type { LinkReader } from "../shared_memory/link_reader.ts";
import type { LinkWriter } from "../shared_memory/link_writer.ts";

/** The buffers of a worker's tasks. */
export class TaskBuffers {
  /** The pipeline's arena, or null for none (`arenaBytes: 0`). */
  readonly arena: Arena | null;
  /** The running task's references (one task at a time; a concurrent task keeps its own), or null for none. */
  refs: number[] | null = null;
  /** A task runs (one task at a time). */
  #inTask = false;

  constructor(
    arena: { memory: ArenaMemory; holder: number } | null,
    reader: LinkReader,
    writer: LinkWriter,
  ) {
    this.arena = arena === null ? null : new Arena(arena.memory, arena.holder);
    if (this.arena !== null) {
      reader.useArena(this.arena);
      writer.useArena(this.arena);
    }
    // For tests and benchmarks: the bytes this worker's codec copied.
    (globalThis as Record<symbol, unknown>)[Symbol.for("mpipe.copiedBytes")] =
      () => Encoder.copiedBytes;
  }

  /** Task `task` starts (one task at a time): it holds the buffers it came with. */
  begin(task: unknown): void {
    this.#inTask = true;
    if (this.arena !== null) this.refs = this.arena.takeTask(task);
  }

  /** The buffers that came with `task` (for a task among others), or null. */
  take(task: unknown): number[] | null {
    return this.arena === null ? null : this.arena.takeTask(task);
  }

  /** The running task ended: its buffers go back (those it put on hold references of their own). */
  end(): void {
    this.#inTask = false;
    const refs = this.refs;
    if (refs === null) return;
    this.refs = null;
    // A worker whose place was taken writes nothing: its replacement
    // releases what it held (`recover`).
    Dismissal.throwIfDismissed();
    this.arena!.releaseAll(refs);
  }

  /** This worker replaces a lost one: what that one held goes back (it writes no more). */
  recover(): void {
    this.arena?.reap(this.arena.holder);
  }

  /** Serves `this.alloc(n)` in tasks; `current` is the running task's slot among others (null after an await), or undefined. */
  serveAlloc(
    current: () => { refs: number[] | null } | null | undefined,
  ): void {
    (globalThis as Record<symbol, unknown>)[Symbol.for("mpipe.alloc")] = (
      n: number,
    ) => this.alloc(n, current());
  }

  /**
   * `this.alloc(n)` in a task: a view on the arena held by the running task
   * (`slot`'s, for a task among others), or an ordinary array when the arena
   * has no room: a worker never waits for space, which stages downstream
   * that wait themselves could hold for ever.
   */
  alloc(
    n: number,
    slot: { refs: number[] | null } | null | undefined,
  ): Uint8Array {
    Dismissal.throwIfDismissed();
    if (typeof n !== "number" || !Number.isInteger(n) || n < 0) {
      throw new RangeError(
        `alloc: 'n' must be a non-negative integer, got ${String(n)}`,
      );
    }
    if (slot === null || (slot === undefined && !this.#inTask)) {
      throw new Error(
        "alloc() was called outside doTask(), or after an await in a stage with concurrency above 1, where it cannot tell which task it belongs to: call it in doTask(), before the first await",
      );
    }
    const arena = this.arena;
    const view = arena === null ? null : arena.tryAlloc(n);
    if (view === null) {
      if (arena !== null) Atomics.add(arena.header, Arena.FALLBACKS, 1);
      return new Uint8Array(n);
    }
    const start = arena!.startOf(view);
    if (slot !== undefined) (slot.refs ??= []).push(start);
    else (this.refs ??= []).push(start);
    return view;
  }
}
