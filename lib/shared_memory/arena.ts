/**
 * The arena: a pipeline's shared memory for large binary payloads, which
 * travel through the rings as small handles (`Encoder.ARENA`) instead of
 * their bytes, so that every stage sees the same memory.
 *
 * Space is handed out in blocks of `BLOCK` bytes by first fit over a list of
 * runs, under a lock (a few microseconds: no user code runs under it). Each
 * allocation has a reference count: one per holder, a holder being a thread
 * that decoded or allocated it, or a record in a ring that carries it. The
 * space comes back when the count drops to 0.
 *
 * Who holds what: the main thread holds what it allocated and the results it
 * read until it puts or frees them (`owned`); a worker holds the buffers of
 * each task until the task ends, and writes them to its table in the arena,
 * from which its replacement releases them if the worker is lost.
 *
 * The buffer is a growable `SharedArrayBuffer`: it reserves `bytes` of address
 * space and commits memory only as allocations reach it, so a pipeline that
 * never allocates pays for 64 bytes.
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import { Mutex } from "./mutex.ts";

/** What a thread needs to open a pipeline's arena. */
export interface ArenaMemory {
  buffer: SharedArrayBuffer;
  /** Blocks of data the arena holds at most. */
  blocks: number;
  /** Worker tables (one per worker place). */
  holders: number;
}

/** One thread's view of a pipeline's arena. */
export class Arena {
  /** Bytes per block: the unit of allocation. */
  static readonly BLOCK = 4096;
  /** References a worker's table records; past that, a lost worker's are left (counted as untracked). */
  static readonly TABLE = 1024;
  /** Header words. */
  static readonly LOCK = 0;
  /** One past the last block of the run list. */
  static readonly TOP = 1;
  /** Bumped each time space comes back while someone waits for it. */
  static readonly FREED = 2;
  static readonly WAITERS = 3;
  static readonly DEBUG = 4;
  static readonly CLOSED = 5;
  /** Figures: allocations live, blocks in use, the most blocks in use, allocations made, worker allocations given an ordinary array, references a lost worker's table missed. */
  static readonly LIVE = 6;
  static readonly USED = 7;
  static readonly HIGH = 8;
  static readonly ALLOCATIONS = 9;
  static readonly FALLBACKS = 10;
  static readonly UNTRACKED = 11;
  static readonly HEADER_BYTES = 64;
  /** What debug mode fills freed space with. */
  static readonly POISON = 0xdb;

  /** Lays out an arena of `bytes` of data for `holders` worker places; reserves it, commits 64 bytes. */
  static create(bytes: number, holders: number, debug: boolean): ArenaMemory {
    const blocks = Math.floor(bytes / Arena.BLOCK);
    const max = Arena.dataStart(blocks, holders) + blocks * Arena.BLOCK;
    const buffer = new SharedArrayBuffer(Arena.HEADER_BYTES, {
      maxByteLength: max,
    });
    if (debug) new Int32Array(buffer)[Arena.DEBUG] = 1;
    return { buffer, blocks, holders };
  }

  /** Where the data starts: after the header, four words per block and the tables. */
  static dataStart(blocks: number, holders: number): number {
    const meta = Arena.HEADER_BYTES + 16 * blocks +
      4 * holders * (1 + Arena.TABLE);
    return Math.ceil(meta / Arena.BLOCK) * Arena.BLOCK;
  }

  readonly buffer: SharedArrayBuffer;
  readonly blocks: number;
  readonly holders: number;
  /** This thread's worker place, or -1 on the main thread. */
  readonly holder: number;
  readonly header: Int32Array;
  readonly dataStart: number;
  readonly debug: boolean;
  /** References this thread holds, by allocation (its first block). */
  readonly owned: Map<number, number> = new Map();
  /** The references of the tasks decoded and not yet started, by task (workers). */
  readonly #byTask = new Map<unknown, number[]>();
  /** References taken in the record being decoded (workers). */
  #fresh: number[] = [];
  // Per block, made once the metadata is committed: a run's length at its
  // first block (used > 0, free < 0), its count and generation there, and
  // for each used block its run's first block.
  #run: Int32Array | null = null;
  #refs: Int32Array | null = null;
  #gen: Int32Array | null = null;
  #head: Int32Array | null = null;
  #tables: Int32Array | null = null;

  constructor(memory: ArenaMemory, holder: number) {
    this.buffer = memory.buffer;
    this.blocks = memory.blocks;
    this.holders = memory.holders;
    this.holder = holder;
    this.header = new Int32Array(memory.buffer, 0, Arena.HEADER_BYTES >> 2);
    this.dataStart = Arena.dataStart(memory.blocks, memory.holders);
    this.debug = this.header[Arena.DEBUG] === 1;
  }

  /** Bytes the arena holds at most. */
  get capacity(): number {
    return this.blocks * Arena.BLOCK;
  }

  /** Whether anything was ever allocated (else no handle exists). */
  get used(): boolean {
    return Atomics.load(this.header, Arena.ALLOCATIONS) > 0;
  }

  /** Whether this is the main thread's view. */
  get main(): boolean {
    return this.holder < 0;
  }

  /**
   * A view of `n` bytes on the arena, held by this thread, or null when the
   * arena has no room for it now (or is closed).
   */
  tryAlloc(n: number): Uint8Array | null {
    const need = Math.max(1, Math.ceil(n / Arena.BLOCK));
    if (need > this.blocks || Atomics.load(this.header, Arena.CLOSED) !== 0) {
      return null;
    }
    const start = this.#allocate(need);
    if (start < 0) return null;
    this.#take(start);
    return new Uint8Array(this.buffer, this.dataStart + start * Arena.BLOCK, n);
  }

  /** The first block of the allocation `view` lies in, or -1 if it lies in none. */
  startOf(view: ArrayBufferView): number {
    const from = view.byteOffset - this.dataStart;
    if (from < 0 || !this.#meta()) return -1;
    const block = Math.floor(from / Arena.BLOCK);
    if (block >= this.blocks) return -1;
    const start = this.#head![block]!;
    const length = this.#run![start]!;
    if (length <= 0 || this.#refs![start]! <= 0) return -1;
    const end = (start + length) * Arena.BLOCK;
    return from + view.byteLength <= end ? start : -1;
  }

  /** The generation of the allocation at `start` (it changes with each allocation there). */
  generation(start: number): number {
    return this.#gen![start]!;
  }

  /** Whether this thread holds a reference to the allocation at `start`. */
  owns(start: number): boolean {
    return (this.owned.get(start) ?? 0) > 0;
  }

  /**
   * A record carrying each allocation of `starts` is about to go to `refs`
   * rings: each ring's record holds a reference of its own. The main thread
   * hands its own on (a put gives the buffer up); a worker keeps its own
   * until the task ends.
   */
  handOn(starts: readonly number[], refs: number): void {
    const counts = this.#refs!;
    for (let i = 0; i < starts.length; i++) {
      const start = starts[i]!;
      if (this.main) {
        this.#give(start);
        if (refs > 1) Atomics.add(counts, start, refs - 1);
      } else Atomics.add(counts, start, refs);
    }
  }

  /**
   * A decoder read a handle that carries a reference (of generation `gen`):
   * this thread now holds it. In debug mode a stale handle throws.
   */
  acquire(start: number, gen: number): void {
    this.#meta();
    this.check(start, gen);
    this.#take(start);
    if (!this.main) this.#fresh.push(start);
  }

  /** In debug mode, throws if the handle (`start`, `gen`) is not of a live allocation. */
  check(start: number, gen: number): void {
    if (!this.debug) return;
    if (
      !this.#meta() || start >= this.blocks || this.#run![start]! <= 0 ||
      this.#gen![start] !== gen || this.#refs![start]! <= 0
    ) {
      throw new Error(
        `An arena handle (block ${start}, generation ${gen}) names space that was freed: a buffer was used after it was put or freed`,
      );
    }
  }

  /** The record just decoded was `value` (workers): its references go with it until its task starts. */
  decoded(value: unknown): void {
    if (this.#fresh.length === 0) return;
    this.#byTask.set(value, this.#fresh);
    this.#fresh = [];
  }

  /** The references that came with task `value` (null for none), which its runner releases at its end. */
  takeTask(value: unknown): number[] | null {
    if (this.#byTask.size === 0) return null;
    const refs = this.#byTask.get(value);
    if (refs === undefined) return null;
    this.#byTask.delete(value);
    return refs;
  }

  /** Gives up this thread's reference to each allocation of `refs`, and empties it. */
  releaseAll(refs: number[]): void {
    for (let i = 0; i < refs.length; i++) this.release(refs[i]!);
    refs.length = 0;
  }

  /** Gives up one of this thread's references to the allocation at `start`. */
  release(start: number): void {
    this.#give(start);
    this.drop(start);
  }

  /** Drops one reference not held by this thread (a record that was not sent, a lost worker's). */
  drop(start: number): void {
    if (Atomics.sub(this.#refs!, start, 1) === 1) this.#free(start);
  }

  /** Releases what the lost worker at place `holder` held (its replacement calls it: the lost one writes no more). */
  reap(holder: number): void {
    if (!this.#meta()) return;
    const tables = this.#tables!;
    const base = holder * (1 + Arena.TABLE);
    const n = Atomics.load(tables, base);
    Atomics.store(tables, base, 0);
    for (let i = 0; i < n; i++) this.drop(tables[base + 1 + i]!);
  }

  /** The pipeline ended: no more allocations; waiters give up. */
  close(): void {
    Atomics.store(this.header, Arena.CLOSED, 1);
    Atomics.add(this.header, Arena.FREED, 1);
    Atomics.notify(this.header, Arena.FREED);
  }

  /** A view of type `name` (as in `Encoder.VIEWS`) at byte `offset` of the arena. */
  view(name: string, offset: number, length: number): ArrayBufferView {
    const Type = (globalThis as unknown as Record<
      string,
      new (
        buffer: SharedArrayBuffer,
        offset: number,
        length: number,
      ) => ArrayBufferView
    >)[name]!;
    return new Type(this.buffer, offset, length);
  }

  // ---- this thread's references ----

  #take(start: number): void {
    this.owned.set(start, (this.owned.get(start) ?? 0) + 1);
    if (this.main) return;
    // Recorded for the main thread in case this worker is lost.
    const tables = this.#tables!;
    const base = this.holder * (1 + Arena.TABLE);
    const n = tables[base]!;
    if (n === Arena.TABLE) Atomics.add(this.header, Arena.UNTRACKED, 1);
    else {
      tables[base + 1 + n] = start;
      Atomics.store(tables, base, n + 1);
    }
  }

  #give(start: number): void {
    const held = this.owned.get(start)!;
    if (held > 1) this.owned.set(start, held - 1);
    else this.owned.delete(start);
    if (this.main) return;
    // Out of the table before the count drops: a worker lost in between
    // leaks the reference rather than dropping it twice.
    const tables = this.#tables!;
    const base = this.holder * (1 + Arena.TABLE);
    const n = tables[base]!;
    for (let i = n; i > 0; i--) {
      if (tables[base + i] === start) {
        tables[base + i] = tables[base + n]!;
        Atomics.store(tables, base, n - 1);
        return;
      }
    }
  }

  // ---- the allocator ----

  #lock(): void {
    // The main thread may not block: it spins (the lock is held briefly).
    if (this.main) {
      while (Atomics.compareExchange(this.header, Arena.LOCK, 0, 1) !== 0);
    } else Mutex.lock(this.header, Arena.LOCK);
  }

  /** Makes the per-block views once the metadata is committed; false if it is not yet. */
  #meta(): boolean {
    if (this.#run !== null) return true;
    if (this.buffer.byteLength < this.dataStart) return false;
    const n = this.blocks;
    const at = Arena.HEADER_BYTES;
    this.#run = new Int32Array(this.buffer, at, n);
    this.#refs = new Int32Array(this.buffer, at + 4 * n, n);
    this.#gen = new Int32Array(this.buffer, at + 8 * n, n);
    this.#head = new Int32Array(this.buffer, at + 12 * n, n);
    this.#tables = new Int32Array(
      this.buffer,
      at + 16 * n,
      this.holders * (1 + Arena.TABLE),
    );
    return true;
  }

  /** First fit over the runs, merging free neighbours on the way; -1 if no room. */
  #allocate(need: number): number {
    this.#lock();
    try {
      if (!this.#meta()) this.#grow(this.dataStart);
      this.#meta();
      const run = this.#run!;
      const header = this.header;
      const top = header[Arena.TOP]!;
      let tail = -1;
      let start = -1;
      for (let i = 0; i < top;) {
        const length = run[i]!;
        if (length > 0) {
          i += length;
          continue;
        }
        let end = i - length;
        while (end < top && run[end]! < 0) {
          const next = end - run[end]!;
          run[end] = 0;
          end = next;
        }
        run[i] = i - end;
        if (end - i >= need) {
          if (end - i > need) run[i + need] = i + need - end;
          start = i;
          break;
        }
        if (end === top) tail = i;
        i = end;
      }
      if (start < 0) {
        // Past the last run, from the free run that ends there if any.
        start = tail >= 0 ? tail : top;
        if (start + need > this.blocks) return -1;
        this.#grow(this.dataStart + (start + need) * Arena.BLOCK);
        header[Arena.TOP] = start + need;
      }
      run[start] = need;
      this.#refs![start] = 1;
      this.#gen![start] = (this.#gen![start]! + 1) | 0;
      this.#head!.fill(start, start, start + need);
      header[Arena.LIVE]!++;
      header[Arena.ALLOCATIONS]!++;
      const used = (header[Arena.USED] = header[Arena.USED]! + need);
      if (used > header[Arena.HIGH]!) header[Arena.HIGH] = used;
      return start;
    } finally {
      Mutex.unlock(this.header, Arena.LOCK);
    }
  }

  /** Commits memory up to `bytes` at least, in steps that double what the data holds. */
  #grow(bytes: number): void {
    const now = this.buffer.byteLength;
    if (bytes <= now) return;
    const data = now - this.dataStart;
    const wanted = Math.max(
      bytes,
      this.dataStart + 2 * data,
      this.dataStart + 2 ** 20,
    );
    this.buffer.grow(Math.min(wanted, this.buffer.maxByteLength));
  }

  #free(start: number): void {
    const run = this.#run!;
    const length = run[start]!;
    if (this.debug) {
      new Uint8Array(
        this.buffer,
        this.dataStart + start * Arena.BLOCK,
        length * Arena.BLOCK,
      ).fill(Arena.POISON);
    }
    const header = this.header;
    this.#lock();
    try {
      run[start] = -length;
      if (start + length === header[Arena.TOP]) {
        header[Arena.TOP] = start;
        run[start] = 0;
      }
      header[Arena.LIVE]!--;
      header[Arena.USED] = header[Arena.USED]! - length;
    } finally {
      Mutex.unlock(this.header, Arena.LOCK);
    }
    if (Atomics.load(header, Arena.WAITERS) > 0) {
      Atomics.add(header, Arena.FREED, 1);
      Atomics.notify(header, Arena.FREED);
    }
  }
}
