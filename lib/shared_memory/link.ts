/**
 * Links: how records move from a group of producers to a group of consumers.
 *
 * Every producer (a stage worker, or the main thread for the pipeline's input)
 * owns one single-producer `Ring` per downstream link. The consumers of a link
 * (the workers of the next stage, or the main thread for a leaf stage) share
 * those rings through `InputLink`: a lone consumer reads them freely; several
 * consumers take a short lock around each claim, so a claim can both pick the
 * next record in order and stamp it with the stage's own sequence number. The
 * lock is held only while records are decoded, never while a task runs.
 *
 * Who calls what: `OutputPort` runs on the producing thread of its rings;
 * `InputLink` on each consumer of the link (several workers of a stage, or
 * the main thread alone for a leaf or a filter's sub-pipeline).
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import type { Arena } from "./arena.ts";
import { Bell } from "./bell.ts";
import { Mutex } from "./mutex.ts";
import { Ring } from "./ring.ts";
import { Decoder, Encoder } from "./codec.ts";
import type { FigureRef } from "./status.ts";

/**
 * Where `InputLink.claimRaw` puts each record's bytes: `add` is called with
 * the bytes `[start, start + length)` of `bytes`, which it must copy (they
 * are the ring's, soon overwritten).
 */
export interface RawRecords {
  add(bytes: Uint8Array, start: number, length: number): void;
}

/** How the consumers of a link read it. */
export interface InputMode {
  /** Several consumers share the link: claims take the lock. */
  shared: boolean;
  /**
   * The rings, in order, grouped by upstream stage: `size` rings each. A group
   * whose stage is ordered and has several workers is merged by sequence
   * number; the others are taken as they arrive.
   */
  groups: { size: number; merge: boolean }[];
  /** Producers bound the backlog, so consumers count tasks as they start. */
  bounded: boolean;
  /** The consumer may block in `Atomics.wait` (workers) or not (the main thread). */
  blocking: boolean;
}

/** The consumer side of a link: the rings of every upstream producer. */
export class InputLink {
  /** Base index of the link's data doorbell. */
  static readonly BELL = 0;
  /** Lock word: 0 free, 1 held, 2 held with waiters. */
  static readonly LOCK = 2;
  /** The next sequence number to stamp on a task (ordered stages). */
  static readonly OWN_SEQ = 5;
  /** Tasks accepted and not yet started (with a maxBacklog). */
  static readonly BACKLOG = 6;
  /** Base index of the doorbell for producers waiting on the backlog. */
  static readonly SPACE_BELL = 7;
  /** How many rings have delivered their stop record (ended). */
  static readonly ENDED_RINGS = 9;
  /** Words before the groups' merge words. */
  static readonly GROUPS = 16;
  /** Group word: the next upstream sequence number to take (ordered merge). */
  static readonly NEXT_SEQ = 0;
  /** Group word: 1 + index of the ring holding NEXT_SEQ's records, 0 if not yet found. */
  static readonly CURRENT = 1;

  /** Bytes of the control block of a link fed by `groups` upstream stages. */
  static bytes(groups: number): number {
    return (InputLink.GROUPS + 2 * groups) * 4;
  }

  /** Index of a group's word (NEXT_SEQ or CURRENT). */
  static groupWord(group: number, word: number): number {
    return InputLink.GROUPS + 2 * group + word;
  }

  /** What `take` found: a task, a record that is not a task, or nothing yet. */
  static readonly TOOK = 1;
  static readonly SKIPPED = 0;
  static readonly NOTHING = -1;

  readonly control: Int32Array;
  readonly rings: Ring[];
  readonly bell: Int32Array;
  readonly bellBase: number;
  readonly mode: InputMode;
  /** Each group's first ring, one past its last ring, and whether it is merged. */
  readonly groups: { start: number; end: number; merge: boolean }[];
  /** The group of each ring. */
  readonly groupOf: number[] = [];
  #decoder = new Decoder();
  /** Set during `claimRaw`: where each record's bytes go instead of being decoded. */
  #raw: RawRecords | null = null;
  #group = 0;
  /** Where each group's as-arrived reading resumes, for fairness. */
  #cursors: number[];
  // A record being reassembled from fragments, and the ring it comes from.
  #partial: Uint8Array | null = null;
  #partialLength = 0;
  #partialRing = -1;
  /** Its large byte run, reassembled apart (see `Decoder.largeRun`), or null. */
  #run: Uint8Array | null = null;

  constructor(
    control: SharedArrayBuffer,
    rings: SharedArrayBuffer[],
    mode: InputMode,
    bell?: { words: Int32Array; base: number },
  ) {
    this.control = new Int32Array(control);
    this.rings = rings.map((buffer) => new Ring(buffer));
    this.mode = mode;
    this.bell = bell?.words ?? this.control;
    this.bellBase = bell?.base ?? InputLink.BELL;
    let start = 0;
    this.groups = mode.groups.map(({ size, merge }, group) => {
      for (let i = 0; i < size; i++) this.groupOf.push(group);
      start += size;
      return { start: start - size, end: start, merge };
    });
    this.#cursors = this.groups.map((group) => group.start);
  }

  /** Decodes arena handles as views on `arena`, held by this thread. */
  useArena(arena: Arena): void {
    this.#decoder.arena = arena;
  }

  /** Whether every upstream producer has stopped and nothing is left. */
  get ended(): boolean {
    // Counts only grow, and a ring's end is counted after its last record
    // was consumed, so "ended" is never reported early.
    return Atomics.load(this.control, InputLink.ENDED_RINGS) ===
        this.rings.length &&
      this.#partial === null;
  }

  /**
   * Takes up to `max` tasks into `values` (with their stamps in `seqs`).
   * Returns how many, or -1 once every upstream has stopped and all is taken.
   */
  claim(values: unknown[], seqs: number[], max: number): number {
    // Once per claim: a killed worker must not take tasks from a replacement.
    Bell.checkKilled();
    if (this.mode.shared) Mutex.lock(this.control, InputLink.LOCK);
    try {
      const rings = this.rings;
      for (let i = 0; i < rings.length; i++) rings[i]!.beginRead();
      const groups = this.groups;
      // A record half reassembled from fragments is finished first.
      if (this.#partialRing >= 0) {
        this.#group = this.groupOf[this.#partialRing]!;
      }
      let count = 0;
      for (let tried = 0; tried < groups.length && count < max; tried++) {
        const group = this.#group;
        count = groups[group]!.merge
          ? this.#claimInOrder(group, values, count, max)
          : this.#claimAsArrived(group, values, count, max);
        if (this.#partial !== null) break;
        this.#group = group + 1 === groups.length ? 0 : group + 1;
      }
      for (let i = 0; i < rings.length; i++) rings[i]!.endRead();
      if (count === 0) return this.ended ? -1 : 0;
      // The stamps order an ordered stage's results and number tasks in
      // errors. One atomic add per claim, not per record: V8 runs each
      // Atomics call as a builtin, not inline.
      const first = Atomics.add(this.control, InputLink.OWN_SEQ, count);
      for (let i = 0; i < count; i++) seqs[i] = first + i;
      return count;
    } finally {
      if (this.mode.shared) Mutex.unlock(this.control, InputLink.LOCK);
    }
  }

  /**
   * Like `claim`, but gives each task's record as it is encoded, appended
   * to `records`, rather than decoded (for a stand-in that sends tasks on
   * as they are: `jetstream/bridge.ts`).
   */
  claimRaw(records: RawRecords, seqs: number[], max: number): number {
    const arena = this.#decoder.arena;
    // Records may hold arena handles, which mean nothing on another machine.
    this.#raw = arena !== null && arena.used ? this.#copying(records) : records;
    try {
      return this.claim(this.#noValues, seqs, max);
    } finally {
      this.#raw = null;
    }
  }

  /** What `claimRaw` gives `claim` for values: none are kept. */
  #noValues: unknown[] = [];

  /**
   * `records`, given each record with its arena buffers copied in (decoded,
   * then encoded again): a record that leaves the machine carries bytes, not
   * handles. This thread's references go back once the copy is made.
   */
  #copying(records: RawRecords): RawRecords {
    const decoder = this.#decoder;
    const arena = decoder.arena!;
    const encoder = this.#copier ??= new Encoder();
    encoder.arena = arena;
    encoder.copyArena = true;
    return {
      add(bytes: Uint8Array, start: number, length: number) {
        const view = new DataView(bytes.buffer, bytes.byteOffset);
        const value = decoder.decode(
          bytes.subarray(0, start + length),
          view,
          start,
        );
        const n = encoder.encode(value);
        const refs = arena.takeTask(value);
        if (refs !== null) arena.releaseAll(refs);
        records.add(encoder.bytes, 0, n);
        encoder.trim();
      },
    };
  }

  #copier: Encoder | null = null;

  /** Whether any ring holds a published record (a lock-free check for spinning). */
  hasData(): boolean {
    const rings = this.rings;
    for (let i = 0; i < rings.length; i++) if (rings[i]!.hasData()) return true;
    return false;
  }

  /** Reads the doorbell before a last claim; sleep on the result with `sleep()`. */
  arm(): number {
    return Bell.arm(this.bell, this.bellBase);
  }

  /** Like `sleep`, without blocking: settles when the bell moves past `counter`. */
  sleepAsync(counter: number): Promise<unknown> {
    Bell.checkKilled();
    const wait = Atomics.waitAsync(
      this.bell,
      this.bellBase + Bell.COUNTER,
      counter,
    );
    return wait.async ? wait.value : Promise.resolve();
  }

  /** Sleeps until a producer rings the bell after `arm()` returned `counter`. */
  sleep(counter: number): void {
    Bell.sleep(this.bell, this.bellBase + Bell.COUNTER, counter);
  }

  /** Counts a claimed task as started, freeing a place in a bounded backlog. */
  taskStarted(): void {
    if (!this.mode.bounded) return;
    // Free the place first, then ring: a producer woken by the bell finds it.
    Atomics.sub(this.control, InputLink.BACKLOG, 1);
    Bell.ring(this.control, InputLink.SPACE_BELL);
  }

  /** Takes the next sequence number for a task this consumer makes up itself (the stop task). */
  nextOwnSeq(): number {
    if (this.mode.shared) Mutex.lock(this.control, InputLink.LOCK);
    // Under the lock, so no claim stamps between its records and this one.
    const seq = Atomics.add(this.control, InputLink.OWN_SEQ, 1);
    if (this.mode.shared) Mutex.unlock(this.control, InputLink.LOCK);
    return seq;
  }

  /** Takes records of group `group` in the order they arrived; returns the new count. */
  #claimAsArrived(
    group: number,
    values: unknown[],
    count: number,
    max: number,
  ): number {
    const { start, end } = this.groups[group]!;
    if (this.#partialRing >= 0) this.#cursors[group] = this.#partialRing;
    for (let tried = start; tried < end && count < max; tried++) {
      const index = this.#cursors[group]!;
      let took: number;
      while (
        count < max &&
        (took = this.#take(index, values, count, -1)) !==
          InputLink.NOTHING
      ) {
        count += took;
      }
      if (this.#partial !== null) break;
      this.#cursors[group] = index + 1 === end ? start : index + 1;
    }
    return count;
  }

  /** Takes records of group `group` in sequence order; returns the new count. */
  #claimInOrder(
    group: number,
    values: unknown[],
    count: number,
    max: number,
  ): number {
    const control = this.control;
    const current = InputLink.groupWord(group, InputLink.CURRENT);
    const next = InputLink.groupWord(group, InputLink.NEXT_SEQ);
    while (count < max) {
      // The merge words are read and written only under the link's lock (or
      // by its lone consumer), so these loads are exact.
      let index = Atomics.load(control, current) - 1;
      if (index < 0) {
        index = this.#findRingOf(group, Atomics.load(control, next));
        if (index < 0) break;
        Atomics.store(control, current, index + 1);
      }
      const took = this.#take(index, values, count, group);
      if (took === InputLink.NOTHING) break;
      count += took;
    }
    return count;
  }

  /** The ring of group `group` whose next record belongs to upstream task `seq`, or -1. */
  #findRingOf(group: number, seq: number): number {
    const { start, end } = this.groups[group]!;
    for (let i = start; i < end; i++) {
      const ring = this.rings[i]!;
      const at = ring.peek();
      if (at < 0) continue;
      if ((ring.kindAt(at) & 0xff) === Ring.STOP) {
        this.#endRing(i);
        continue;
      }
      if (ring.seqAt(at) === seq) return i;
    }
    return -1;
  }

  /**
   * Takes one record from ring `index`; returns TOOK, SKIPPED or NOTHING.
   * `merged` is the ring's group when that group is merged by sequence, or -1.
   */
  #take(
    index: number,
    values: unknown[],
    count: number,
    merged: number,
  ): number {
    const ring = this.rings[index]!;
    const at = ring.peek();
    if (at < 0) return InputLink.NOTHING;
    const kind = ring.kindAt(at);
    const base = kind & 0xff;
    if (base === Ring.STOP) {
      this.#endRing(index);
      return InputLink.NOTHING;
    }
    let value: unknown = undefined;
    if (kind & Ring.FRAGMENT) {
      if (!this.#takeFragment(index, at, kind)) return InputLink.NOTHING;
      const whole = this.#partial!;
      const run = this.#run;
      this.#partial = null;
      this.#run = null;
      this.#partialRing = -1;
      const view = new DataView(whole.buffer);
      if (this.#raw !== null) this.#raw.add(whole, 0, whole.length);
      else if (run === null) value = this.#decoder.decode(whole, view, 0);
      else {
        value = this.#decoder.decodeWithRun(
          whole,
          view,
          run,
          Decoder.LARGE_RUN_AT,
        );
      }
      // The value holds copies of what it needs (or the run itself).
      if (whole.length > Encoder.KEEP_BYTES) {
        Encoder.free(whole.buffer as ArrayBuffer);
      }
    } else {
      if (base === Ring.DATA) {
        if (this.#raw !== null) {
          this.#raw.add(ring.bytes, at + Ring.FRAME_BYTES, ring.lengthAt(at));
        } else {
          value = this.#decoder.decode(
            ring.bytes,
            ring.view,
            at + Ring.FRAME_BYTES,
          );
        }
      }
      ring.advance();
    }
    if (merged >= 0 && kind & Ring.LAST) {
      // The group's next task is the one after this: move NEXT_SEQ first (a
      // producer waiting on the backlog compares its record with it), then
      // forget which ring held this one.
      Atomics.add(
        this.control,
        InputLink.groupWord(merged, InputLink.NEXT_SEQ),
        1,
      );
      Atomics.store(
        this.control,
        InputLink.groupWord(merged, InputLink.CURRENT),
        0,
      );
      // A producer may wait on the backlog with the record now wanted.
      if (this.mode.bounded) Bell.ring(this.control, InputLink.SPACE_BELL);
    }
    if (base !== Ring.DATA) return InputLink.SKIPPED;
    values[count] = value;
    return InputLink.TOOK;
  }

  /**
   * Copies fragments of a large record into the reassembly buffer, starting
   * with the one at `at`. True once the record is whole. A blocking consumer
   * waits for the remaining fragments (releasing what it read, so the producer
   * has room); the main thread returns false and resumes on its next claim.
   */
  #takeFragment(index: number, at: number, kind: number): boolean {
    const ring = this.rings[index]!;
    if (this.#partial === null) {
      const total = ring.totalAt(at);
      // A record that is one large byte run: the run gets a buffer of its
      // own, the value's, and the rest of the record another.
      const run = total > Encoder.KEEP_BYTES && this.#raw === null
        ? Decoder.largeRun(
          ring.bytes,
          at + Ring.FRAME_BYTES,
          ring.lengthAt(at),
        )
        : -1;
      this.#run = run < 0 ? null : new Uint8Array(run);
      this.#partial = new Uint8Array(run < 0 ? total : total - run);
      this.#partialLength = 0;
      this.#partialRing = index;
    }
    for (;;) {
      const length = ring.lengthAt(at);
      this.#copyFragment(ring.bytes, at + Ring.FRAME_BYTES, length);
      ring.advance();
      if (!(kind & Ring.MORE)) return true;
      at = ring.peek();
      while (at < 0) {
        if (!this.mode.blocking) return false;
        ring.endRead();
        const counter = this.arm();
        ring.beginRead();
        at = ring.peek();
        if (at < 0) {
          this.sleep(counter);
          ring.beginRead();
          at = ring.peek();
        }
      }
      kind = ring.kindAt(at);
    }
  }

  /** Copies a fragment's `length` bytes at `bytes[start]` to where they go in the record being reassembled. */
  #copyFragment(bytes: Uint8Array, start: number, length: number): void {
    let at = this.#partialLength;
    this.#partialLength += length;
    const partial = this.#partial!;
    const run = this.#run;
    if (run === null) {
      partial.set(bytes.subarray(start, start + length), at);
      return;
    }
    // Before the run, in it, or after it (then without its length).
    const runAt = Decoder.LARGE_RUN_AT;
    const runEnd = runAt + run.length;
    while (length > 0) {
      const n = Math.min(
        length,
        at < runAt ? runAt - at : at < runEnd ? runEnd - at : length,
      );
      const part = bytes.subarray(start, start + n);
      if (at < runAt) partial.set(part, at);
      else if (at < runEnd) run.set(part, at - runAt);
      else partial.set(part, at - run.length);
      at += n;
      start += n;
      length -= n;
    }
  }

  #endRing(index: number): void {
    const ring = this.rings[index]!;
    ring.advance();
    // The ring's flag (for inspection), then the link's count that `ended` reads.
    Atomics.store(ring.control, Ring.ENDED, 1);
    Atomics.add(this.control, InputLink.ENDED_RINGS, 1);
    // Other consumers of this link may sleep on the bell: let them see the end.
    Bell.ringAlways(this.bell, this.bellBase);
  }
}

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
export class OutputPort {
  readonly rings: Ring[];
  readonly bells: Int32Array[];
  readonly bellBases: number[];
  readonly links: Int32Array[];
  readonly maxBacklogs: number[];
  readonly nextSeqWords: number[];
  /** Called after anything was published. */
  onPublish: (() => void) | null = null;
  /** Ms this port spent asleep waiting for room downstream. */
  blockedMs = 0;
  /** Each branch's float that counts its waits for room (see `Branch.fullMs`), or null. */
  readonly fullMs: (Float64Array | null)[];
  readonly fullMsAt: number[];
  /**
   * Called while a write waits for room, once the ring's space bell is armed.
   * A thread that also consumes what its output leads to (a filter and its
   * sub-pipelines) drains it here, so that the two never wait on each other;
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
    Bell.checkRevoked();
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
   * Like `put` for a port of one branch, but when the branch's backlog is
   * full it writes nothing and returns false (a filter sheds the task).
   */
  offer(value: unknown, kind: number, seq: number): boolean {
    Bell.checkRevoked();
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
    Bell.checkRevoked();
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

  /** Writes a record without payload (END or STOP) to every branch. */
  putEmpty(kind: number, seq: number): void {
    Bell.checkRevoked();
    for (let i = 0; i < this.rings.length; i++) {
      this.#write(i, kind, seq, null, 0);
    }
  }

  /** Publishes what was written and wakes the consumers that sleep. */
  publish(): void {
    // Once per batch: a killed worker must not move a head a replacement owns.
    Bell.checkKilled();
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
    return OutputPort.#attemptParts(
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
      const counter = Bell.arm(link, InputLink.SPACE_BELL);
      if (this.#tryEnterBacklog(branch, seq)) return;
      const asleep = performance.now();
      Bell.sleep(link, InputLink.SPACE_BELL + Bell.COUNTER, counter);
      this.#waited(branch, performance.now() - asleep);
    }
  }

  /** Counts `ms` asleep waiting for room in `branch`: this port's and the branch's. */
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
      const backlog = Atomics.load(link, InputLink.BACKLOG);
      if (!OutputPort.#mayEnter(link, backlog, max, nextSeq, seq)) return false;
      if (
        Atomics.compareExchange(
          link,
          InputLink.BACKLOG,
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
