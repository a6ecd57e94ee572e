/**
 * The consumer side of a link: how a group of consumers reads the records
 * of every upstream producer.
 *
 * Every producer (a stage worker, or the main thread for the pipeline's input)
 * owns one single-producer `Ring` per downstream link (see `link_writer.ts`).
 * The consumers of a link (the workers of the next stage, or the main thread
 * for a leaf stage: it reads the pipeline's output through a `LinkReader`)
 * share those rings through `LinkReader`: a lone consumer reads them freely;
 * several consumers take a short lock around each claim, so a claim can both
 * pick the next record in order and stamp it with the stage's own sequence
 * number. The lock is held only while records are decoded, never while a task
 * runs. The link's control block (its words below) is laid out here; the
 * writers read and write its backlog words.
 *
 * Who calls what: `LinkReader` runs on each consumer of the link (several
 * workers of a stage, or the main thread alone for a leaf or a filter's
 * sub-pipeline).
 *
 * Shipped to workers by source, like `ring.ts`.
 *
 * @module
 */

import type { Arena } from "./arena.ts";
import { Bell } from "./bell.ts";
import { Dismissal } from "./dismissal.ts";
import { Mutex } from "./mutex.ts";
import { Ring } from "./ring.ts";
import { Decoder, Encoder } from "./codec.ts";

/**
 * Where `LinkReader.claimRaw` puts each record's bytes: `add` is called with
 * the bytes `[start, start + length)` of `bytes`, which it must copy (they
 * are the ring's, soon overwritten).
 */
export interface RawRecords {
  add(bytes: Uint8Array, start: number, length: number): void;
}

/** How the consumers of a link read it. */
export interface ReadMode {
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
export class LinkReader {
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
  /** How many rings have delivered their stop record (stopped). */
  static readonly STOPPED_RINGS = 9;
  /** Words before the groups' merge words. */
  static readonly GROUPS = 16;
  /** Group word: the next upstream sequence number to take (ordered merge). */
  static readonly NEXT_SEQ = 0;
  /** Group word: 1 + index of the ring holding NEXT_SEQ's records, 0 if not yet found. */
  static readonly CURRENT = 1;

  /** Bytes of the control block of a link fed by `groups` upstream stages. */
  static bytes(groups: number): number {
    return (LinkReader.GROUPS + 2 * groups) * 4;
  }

  /** Index of a group's word (NEXT_SEQ or CURRENT). */
  static groupWord(group: number, word: number): number {
    return LinkReader.GROUPS + 2 * group + word;
  }

  /** What `take` found: a task, a record that is not a task, or nothing yet. */
  static readonly TOOK = 1;
  static readonly SKIPPED = 0;
  static readonly NOTHING = -1;

  readonly control: Int32Array;
  readonly rings: Ring[];
  readonly bell: Int32Array;
  readonly bellBase: number;
  readonly mode: ReadMode;
  /** Each group's first ring, one past its last ring, and whether it is merged. */
  readonly groups: { start: number; end: number; merge: boolean }[];
  /** The group of each ring. */
  readonly groupOf: number[] = [];
  #decoder = new Decoder();
  /** Set during `claimRaw`: where each record's bytes go instead of being decoded. */
  #raw: RawRecords | null = null;
  #group = 0;
  /** Whether the record `#take` took last was its task's last (`Ring.LAST`). */
  #tookLast = false;
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
    mode: ReadMode,
    bell?: { words: Int32Array; base: number },
  ) {
    this.control = new Int32Array(control);
    this.rings = rings.map((buffer) => new Ring(buffer));
    this.mode = mode;
    this.bell = bell?.words ?? this.control;
    this.bellBase = bell?.base ?? LinkReader.BELL;
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
  get stopped(): boolean {
    // Counts only grow, and a ring's stop is counted after its last record
    // was consumed, so "stopped" is never reported early.
    return Atomics.load(this.control, LinkReader.STOPPED_RINGS) ===
        this.rings.length &&
      this.#partial === null;
  }

  /**
   * Takes up to `max` tasks into `values` (with their stamps in `seqs`).
   * Returns how many, or -1 once every upstream has stopped and all is taken.
   */
  claim(values: unknown[], seqs: number[], max: number): number {
    // Once per claim: a dismissed worker must not take tasks from a replacement.
    Dismissal.throwIfDismissed();
    if (this.mode.shared) Mutex.lock(this.control, LinkReader.LOCK);
    try {
      const rings = this.rings;
      for (let i = 0; i < rings.length; i++) rings[i]!.beginRead();
      const groups = this.groups;
      // A record half reassembled from fragments is completed first.
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
      for (let i = 0; i < rings.length; i++) rings[i]!.releaseRead();
      if (count === 0) return this.stopped ? -1 : 0;
      // The stamps order an ordered stage's results and number tasks in
      // errors. One atomic add per claim, not per record: V8 runs each
      // Atomics call as a builtin, not inline.
      const first = Atomics.add(this.control, LinkReader.OWN_SEQ, count);
      for (let i = 0; i < count; i++) seqs[i] = first + i;
      return count;
    } finally {
      if (this.mode.shared) Mutex.unlock(this.control, LinkReader.LOCK);
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
    Dismissal.throwIfDismissed();
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
    Atomics.sub(this.control, LinkReader.BACKLOG, 1);
    Bell.ring(this.control, LinkReader.SPACE_BELL);
  }

  /** Takes the next sequence number for a task this consumer makes up itself (the stop task). */
  nextOwnSeq(): number {
    if (this.mode.shared) Mutex.lock(this.control, LinkReader.LOCK);
    // Under the lock, so no claim stamps between its records and this one.
    const seq = Atomics.add(this.control, LinkReader.OWN_SEQ, 1);
    if (this.mode.shared) Mutex.unlock(this.control, LinkReader.LOCK);
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
        (took = this.#take(index, values, count)) !==
          LinkReader.NOTHING
      ) {
        count += took;
      }
      if (this.#partial !== null) break;
      this.#cursors[group] = index + 1 === end ? start : index + 1;
    }
    return count;
  }

  /**
   * Takes records of group `group` in sequence order; returns the new count.
   * The merge words are read and written only under the link's lock (or by
   * its lone consumer), so the claim keeps them in locals and stores them
   * once at its end: atomics per claim, not per record.
   */
  #claimInOrder(
    group: number,
    values: unknown[],
    count: number,
    max: number,
  ): number {
    const control = this.control;
    const currentWord = LinkReader.groupWord(group, LinkReader.CURRENT);
    const nextWord = LinkReader.groupWord(group, LinkReader.NEXT_SEQ);
    const first = Atomics.load(control, nextWord);
    const found = Atomics.load(control, currentWord);
    let next = first;
    let index = found - 1;
    // Where the last task's records were: its next one is most likely there.
    let hint = index;
    while (count < max) {
      if (index < 0) {
        index = this.#findRingOf(group, next, hint);
        if (index < 0) break;
      }
      const took = this.#take(index, values, count);
      if (took === LinkReader.NOTHING) break;
      count += took;
      if (this.#tookLast) {
        next++;
        hint = index;
        index = -1;
      }
    }
    if (index + 1 !== found) Atomics.store(control, currentWord, index + 1);
    if (next !== first) {
      // A producer waiting on the backlog compares its record with NEXT_SEQ.
      Atomics.store(control, nextWord, next);
      if (this.mode.bounded) Bell.ring(control, LinkReader.SPACE_BELL);
    }
    return count;
  }

  /**
   * The ring of group `group` whose next record belongs to upstream task
   * `seq`, or -1; it looks at ring `hint` first (-1: none).
   */
  #findRingOf(group: number, seq: number, hint: number): number {
    if (hint >= 0) {
      const ring = this.rings[hint]!;
      const at = ring.peek();
      if (
        at >= 0 && ring.seqAt(at) === seq &&
        (ring.kindAt(at) & 0xff) !== Ring.STOP
      ) return hint;
    }
    const { start, end } = this.groups[group]!;
    for (let i = start; i < end; i++) {
      const ring = this.rings[i]!;
      const at = ring.peek();
      if (at < 0) continue;
      if ((ring.kindAt(at) & 0xff) === Ring.STOP) {
        this.#takeStop(i);
        continue;
      }
      if (ring.seqAt(at) === seq) return i;
    }
    return -1;
  }

  /**
   * Takes one record from ring `index`; returns TOOK, SKIPPED or NOTHING,
   * and sets `#tookLast` when the record was its task's last (for a merge).
   */
  #take(index: number, values: unknown[], count: number): number {
    const ring = this.rings[index]!;
    const at = ring.peek();
    if (at < 0) return LinkReader.NOTHING;
    const kind = ring.kindAt(at);
    this.#tookLast = (kind & Ring.LAST) !== 0;
    const base = kind & 0xff;
    if (base === Ring.STOP) {
      this.#takeStop(index);
      return LinkReader.NOTHING;
    }
    let value: unknown = undefined;
    if (kind & Ring.FRAGMENT) {
      if (!this.#takeFragment(index, at, kind)) return LinkReader.NOTHING;
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
    if (base !== Ring.DATA) return LinkReader.SKIPPED;
    values[count] = value;
    return LinkReader.TOOK;
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
        ring.releaseRead();
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

  /** Consumes ring `index`'s stop record and counts the ring as stopped. */
  #takeStop(index: number): void {
    const ring = this.rings[index]!;
    ring.advance();
    // The ring's flag (for inspection), then the link's count that `stopped` reads.
    Atomics.store(ring.control, Ring.STOPPED, 1);
    Atomics.add(this.control, LinkReader.STOPPED_RINGS, 1);
    // Other consumers of this link may sleep on the bell: let them see the stop.
    Bell.ringAlways(this.bell, this.bellBase);
  }
}
