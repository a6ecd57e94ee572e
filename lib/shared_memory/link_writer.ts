/**
 * The producer side of a link: how one producer writes each record to every
 * downstream link it feeds.
 *
 * A producer (a stage worker, or a filter's worker for its sub-pipelines)
 * owns one single-producer `Ring` per downstream link, and `LinkWriter`
 * writes each record to all of them: encoded once, blocking while a ring is
 * full or a downstream backlog (words of the link's control block, laid out
 * in `link_reader.ts`) is at its bound.
 *
 * Who calls what: `LinkWriter` runs on the producing thread of its rings, for
 * their whole life. (The main thread writes the pipeline's input through
 * `main_thread/task_input.ts`, not through this class.)
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import type { Arena } from "./arena.ts";
import { Bell } from "./bell.ts";
import { Dismissal } from "./dismissal.ts";
import { Ring } from "./ring.ts";
import { Encoder } from "./codec.ts";
import { LinkReader } from "./link_reader.ts";
import type { FigureRef } from "./status.ts";

/** One downstream link of a producer: its ring, and the link it feeds. */
export interface Branch {
  ring: SharedArrayBuffer;
  /** The consumers' doorbell: the link's control block, or the main thread's bell. */
  bell: SharedArrayBuffer;
  bellBase: number;
  /** The downstream link's control block (for the backlog). */
  link: SharedArrayBuffer;
  /** Bound on the downstream stage's backlog; 0 for none. */
  maxBacklog: number;
  /** Index of the NEXT_SEQ word of this producer's group downstream, if that group is merged by sequence; -1 if not. */
  nextSeqWord: number;
  /**
   * Where this producer adds the ms it waits for room in the branch: a float
   * of the downstream stage's status block (`StageStatus.FULL_MS`), as an
   * index into a `Float64Array` over `buffer`; absent for the main thread.
   */
  fullMs?: FigureRef;
}

/**
 * The producer side of a worker: writes each record to every downstream link,
 * blocking while a ring is full or a backlog is at its bound.
 */
export class LinkWriter {
  readonly rings: Ring[];
  readonly bells: Int32Array[];
  readonly bellBases: number[];
  readonly links: Int32Array[];
  readonly maxBacklogs: number[];
  readonly nextSeqWords: number[];
  /** Called after anything was published. */
  onPublish: (() => void) | null = null;
  /** Ms this writer spent asleep waiting for room downstream. */
  blockedMs = 0;
  /** Each branch's float that counts its waits for room (see `Branch.fullMs`), or null. */
  readonly fullMs: (Float64Array | null)[];
  readonly fullMsAt: number[];
  /**
   * Called while a write waits for room, once the ring's space bell is armed.
   * A thread that also consumes what its output leads to (a filter and its
   * sub-pipelines) collects from it here, so that the two never wait on each other;
   * whatever it consumes must ring this same bell (see `Wiring`).
   */
  whileFull: (() => void) | null = null;
  #encoder = new Encoder();
  /**
   * While `put` writes a record whose large runs its encoder left out: the
   * record is the encoder's bytes with each run put in at its place.
   */
  #runs: { at: number; bytes: Uint8Array }[] | null = null;

  constructor(branches: Branch[]) {
    this.rings = branches.map((b) => new Ring(b.ring));
    this.bells = branches.map((b) => new Int32Array(b.bell));
    this.bellBases = branches.map((b) => b.bellBase);
    this.links = branches.map((b) => new Int32Array(b.link));
    this.maxBacklogs = branches.map((b) => b.maxBacklog);
    this.nextSeqWords = branches.map((b) => b.nextSeqWord);
    this.fullMs = branches.map((b) =>
      b.fullMs === undefined ? null : new Float64Array(b.fullMs.buffer)
    );
    this.fullMsAt = branches.map((b) => b.fullMs?.index ?? 0);
  }

  /** Sends views on `arena` as handles: each branch's record holds a reference of its own. */
  useArena(arena: Arena): void {
    this.#encoder.arena = arena;
    this.#encoder.arenaRefs = this.rings.length;
  }

  /**
   * Encodes `value` once and writes it to every branch. Throws a
   * `DataCloneError` before writing anything if the value cannot be cloned.
   */
  put(value: unknown, kind: number, seq: number): void {
    // Per record, so a plain field read: a worker that resigned writes nothing.
    if (Dismissal.resigned) Dismissal.unwind();
    const encoder = this.#encoder.idle();
    // A large byte run is written from the value, not copied first.
    const length = encoder.encode(value, true);
    const runs = encoder.leftOut;
    if (runs.length === 0) this.#putBytes(encoder.bytes, length, kind, seq);
    else {
      this.#runs = runs;
      try {
        const total = runs.reduce((sum, run) => sum + run.bytes.length, length);
        this.#putBytes(encoder.bytes, total, kind, seq);
      } finally {
        this.#runs = null;
        runs.length = 0;
      }
    }
    encoder.trim();
  }

  /**
   * Encodes `value` into bytes of its own, to be written later with
   * `putEncoded`. Throws a `DataCloneError` if it cannot be cloned.
   */
  encode(value: unknown): Uint8Array {
    const encoder = this.#encoder.idle();
    // A record written later takes its arena references then (`putEncoded`):
    // one never written (its task timed out) takes none.
    const refs = encoder.arenaRefs;
    encoder.arenaRefs = 0;
    let length: number;
    try {
      // The length first: encoding may grow the encoder's buffer.
      length = encoder.encode(value);
    } finally {
      encoder.arenaRefs = refs;
    }
    const bytes = encoder.bytes.slice(0, length);
    if (encoder.arenaStarts.length !== 0) {
      this.#deferred.set(bytes, encoder.arenaStarts.slice());
      this.#deferring = true;
    }
    encoder.trim();
    return bytes;
  }

  /** The arena references of records made by `encode`, taken when they are written. */
  readonly #deferred = new WeakMap<Uint8Array, number[]>();
  #deferring = false;

  /**
   * Like `put` for a writer of one branch, but when the branch's backlog is
   * full it writes nothing and returns false (a filter sheds the task).
   */
  offer(value: unknown, kind: number, seq: number): boolean {
    if (Dismissal.resigned) Dismissal.unwind();
    const encoder = this.#encoder.idle();
    const length = encoder.encode(value);
    if (this.maxBacklogs[0]! > 0 && !this.#tryEnterBacklog(0, seq)) {
      // Shed: the record's references go back.
      const refs = encoder.arenaStarts;
      for (let i = 0; i < refs.length; i++) encoder.arena!.drop(refs[i]!);
      return false;
    }
    this.#write(0, kind, seq, encoder.bytes, length);
    encoder.trim();
    return true;
  }

  /** Writes a value encoded by `encode` to every branch. */
  putEncoded(bytes: Uint8Array, kind: number, seq: number): void {
    if (Dismissal.resigned) Dismissal.unwind();
    if (this.#deferring) {
      const refs = this.#deferred.get(bytes);
      if (refs !== undefined) {
        this.#deferred.delete(bytes);
        this.#encoder.arena!.handOn(refs, this.rings.length);
      }
    }
    this.#putBytes(bytes, bytes.length, kind, seq);
  }

  #putBytes(bytes: Uint8Array, length: number, kind: number, seq: number) {
    for (let i = 0; i < this.rings.length; i++) {
      if (this.maxBacklogs[i]! > 0) this.#enterBacklog(i, seq);
      this.#write(i, kind, seq, bytes, length);
    }
  }

  /** Writes a record without payload (TASK_DONE or STOP) to every branch. */
  putEmpty(kind: number, seq: number): void {
    if (Dismissal.resigned) Dismissal.unwind();
    for (let i = 0; i < this.rings.length; i++) {
      this.#write(i, kind, seq, null, 0);
    }
  }

  /** Publishes what was written and wakes the consumers that sleep. */
  publish(): void {
    // Once per publish: a dismissed worker must not move a head a replacement owns.
    Dismissal.throwIfDismissed();
    const rings = this.rings;
    for (let i = 0; i < rings.length; i++) {
      if (rings[i]!.publish()) Bell.ring(this.bells[i]!, this.bellBases[i]!);
    }
    this.onPublish?.();
  }

  #write(
    branch: number,
    kind: number,
    seq: number,
    bytes: Uint8Array | null,
    length: number,
  ): void {
    const ring = this.rings[branch]!;
    // An empty record counts as one unit written, so both kinds share a target.
    const target = bytes === null ? 1 : length;
    let done = this.#attempt(ring, kind, seq, bytes, 0, length);
    while (done !== target) {
      // Full: publish so the consumer can make room, then sleep until it does.
      this.publish();
      const counter = Bell.arm(ring.control, Ring.SPACE_BELL);
      this.whileFull?.();
      const before = done;
      done = this.#attempt(ring, kind, seq, bytes, done, length);
      if (done === before) {
        const asleep = performance.now();
        Bell.sleep(ring.control, Ring.SPACE_BELL + Bell.COUNTER, counter);
        this.#waited(branch, performance.now() - asleep);
        done = this.#attempt(ring, kind, seq, bytes, done, length);
      }
    }
  }

  /** Writes what fits of a record from `from` on; an empty one is 0 or 1 written. */
  #attempt(
    ring: Ring,
    kind: number,
    seq: number,
    bytes: Uint8Array | null,
    from: number,
    length: number,
  ): number {
    if (bytes === null) return ring.writeEmpty(kind, seq) ? 1 : 0;
    if (this.#runs === null) return ring.write(kind, seq, bytes, from, length);
    return LinkWriter.#attemptParts(
      ring,
      kind,
      seq,
      bytes,
      this.#runs,
      from,
      length,
    );
  }

  /**
   * Writes what fits of a record of `total` bytes, from `from` on, whose
   * parts are `bytes` with each of `runs` put in at its place; returns how
   * far it got.
   */
  static #attemptParts(
    ring: Ring,
    kind: number,
    seq: number,
    bytes: Uint8Array,
    runs: { at: number; bytes: Uint8Array }[],
    from: number,
    total: number,
  ): number {
    const own = total - runs.reduce((sum, run) => sum + run.bytes.length, 0);
    // Even parts are stretches of `bytes` (up to the next run's place), odd
    // ones the runs; `start` is a part's offset in the record.
    let start = 0;
    let taken = 0;
    for (let i = 0; i <= 2 * runs.length; i++) {
      const run = runs[i >> 1];
      let src = bytes;
      let begin = taken;
      let end = run?.at ?? own;
      if (i % 2 === 1) [src, begin, end] = [run!.bytes, 0, run!.bytes.length];
      else taken = end;
      const length = end - begin;
      if (from < start + length) {
        const more = start + length < total;
        const at = begin + from - start;
        const done = ring.writeFragments(kind, seq, src, at, end, total, more);
        if (done < end) return start + done - begin;
        from = start + length;
      }
      start += length;
    }
    return total;
  }

  /**
   * Waits for a place in the downstream backlog, then takes it. When the
   * downstream merges by sequence, the record it waits for always enters:
   * otherwise later records could fill the backlog and nothing could move.
   */
  #enterBacklog(branch: number, seq: number): void {
    const link = this.links[branch]!;
    while (!this.#tryEnterBacklog(branch, seq)) {
      this.publish();
      // Arm, then look again, then sleep: the bell is rung after each place
      // is freed, so a place freed after the arm still wakes us.
      const counter = Bell.arm(link, LinkReader.SPACE_BELL);
      if (this.#tryEnterBacklog(branch, seq)) return;
      const asleep = performance.now();
      Bell.sleep(link, LinkReader.SPACE_BELL + Bell.COUNTER, counter);
      this.#waited(branch, performance.now() - asleep);
    }
  }

  /** Counts `ms` asleep waiting for room in `branch`: this writer's and the branch's. */
  #waited(branch: number, ms: number): void {
    this.blockedMs += ms;
    // A plain store: this producer alone writes its branch's float.
    const fullMs = this.fullMs[branch]!;
    if (fullMs !== null) fullMs[this.fullMsAt[branch]!]! += ms;
  }

  /** Takes a place in the downstream backlog if record `seq` may enter now. */
  #tryEnterBacklog(branch: number, seq: number): boolean {
    const link = this.links[branch]!;
    const max = this.maxBacklogs[branch]!;
    const nextSeq = this.nextSeqWords[branch]!;
    for (;;) {
      // A snapshot: consumers lower it and other producers raise it at any
      // time, so a place is only taken by the compare-exchange below.
      const backlog = Atomics.load(link, LinkReader.BACKLOG);
      if (!LinkWriter.#mayEnter(link, backlog, max, nextSeq, seq)) return false;
      if (
        Atomics.compareExchange(
          link,
          LinkReader.BACKLOG,
          backlog,
          backlog + 1,
        ) === backlog
      ) return true;
    }
  }

  /**
   * Whether record `seq` may enter a backlog of `backlog`. A record the merge
   * waits for (its group's NEXT_SEQ) always enters; one it cannot take yet
   * leaves a place free for records it can take: otherwise such records could
   * fill the backlog while the awaited one's producer waits on another
   * upstream stage that waits on this backlog (a join), and nothing moves.
   */
  static #mayEnter(
    link: Int32Array,
    backlog: number,
    max: number,
    nextSeq: number,
    seq: number,
  ): boolean {
    if (nextSeq < 0) return backlog < max;
    // NEXT_SEQ may be stale towards the past: then this record waits for the
    // next ring of the space bell, which every merge step rings.
    if (Atomics.load(link, nextSeq) === seq) return true;
    return backlog < max - 1;
  }
}
