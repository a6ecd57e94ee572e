/**
 * A bounded single-producer ring of variable-length records in a
 * SharedArrayBuffer.
 *
 * Who calls what: one producer thread calls the producer half (`write`,
 * `writeEmpty`, `publish`) for the ring's whole life; the consumer half
 * (`beginRead` … `releaseRead`) belongs to one consumer at a time: the lone
 * consumer of a link, or whichever consumer holds the link's lock (see
 * `LinkReader`). Roles never change.
 *
 * Shipped to stage workers by its source text (`Function.prototype.toString`,
 * see `worker_thread/script.ts`), so it refers only to globals and to the other
 * shipped classes by name, and keeps its constants as static fields.
 *
 * @module
 */

import { Bell } from "./bell.ts";

/**
 * A single-producer ring of framed records. Each record is a 16-byte frame
 * `[payload length | sequence | kind and flags | total length]` followed by the
 * payload, padded to 8 bytes. A record that does not fit before the end of the
 * buffer is preceded by a pad frame that sends the reader back to offset 0.
 *
 * The producer owns `head`, the consumer side owns `tail`; both are byte
 * counters kept as signed 32-bit integers (`| 0`), the form `Atomics.load`
 * returns, so they compare equal across threads however far they have
 * wrapped; `head - tail` is the bytes in use. `Atomics` orders every payload
 * write before the head store that publishes it. Several consumers may
 * share the consumer side only while holding their link's lock
 * (see `LinkReader`).
 */
export class Ring {
  /** Word index of the published head (producer). */
  static readonly HEAD = 0;
  /** Base index of the producer's space doorbell. */
  static readonly SPACE_BELL = 1;
  /** Word index of the flag set once the stop record was consumed: the ring has stopped. */
  static readonly STOPPED = 3;
  /** Word index of the released tail (consumers); on its own cache line. */
  static readonly TAIL = 16;
  /** Bytes of control words before the data area. */
  static readonly CONTROL_BYTES = 128;
  /** Bytes of a record frame. */
  static readonly FRAME_BYTES = 16;
  /** Length marking a pad frame. */
  static readonly PAD = -1;

  /** Record kinds (low byte of the kind word). */
  static readonly DATA = 1;
  /** An ordered task is done and puts no (more) results (written with LAST). */
  static readonly TASK_DONE = 2;
  /** The stop request: the last record a producer writes. */
  static readonly STOP = 3;
  /** Flag: this record is one fragment of a larger one. */
  static readonly FRAGMENT = 0x100;
  /** Flag: more fragments of this record follow. */
  static readonly MORE = 0x200;
  /** Flag: the last record of its task (ordered stages). */
  static readonly LAST = 0x400;

  /** Creates the shared memory for a ring of `capacity` data bytes (a power of two). */
  static allocate(capacity: number): SharedArrayBuffer {
    return new SharedArrayBuffer(Ring.CONTROL_BYTES + capacity);
  }

  readonly buffer: SharedArrayBuffer;
  readonly control: Int32Array;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly capacity: number;
  /** The largest payload written as one record; larger ones are fragmented. */
  readonly maxPayload: number;

  // Producer side, private to the producing thread.
  #head = 0;
  #tailSeen = 0;
  // Consumer side, valid between beginRead() and releaseRead().
  #tail = 0;
  #headSeen = 0;
  #peeked = 0;

  constructor(buffer: SharedArrayBuffer) {
    this.buffer = buffer;
    this.capacity = buffer.byteLength - Ring.CONTROL_BYTES;
    this.control = new Int32Array(buffer, 0, Ring.CONTROL_BYTES >> 2);
    this.bytes = new Uint8Array(buffer, Ring.CONTROL_BYTES, this.capacity);
    this.view = new DataView(buffer, Ring.CONTROL_BYTES, this.capacity);
    // At most a quarter of the ring, so a record always fits once the ring drains.
    this.maxPayload = (this.capacity >> 2) - Ring.FRAME_BYTES;
    // A new producer (a replacement worker) resumes from what was published.
    this.#head = Atomics.load(this.control, Ring.HEAD);
    this.#tailSeen = Atomics.load(this.control, Ring.TAIL);
  }

  // ---- producer ----

  /**
   * Writes `src[start, end)` as one record, or as fragments when it is larger
   * than `maxPayload`, as far as there is room. Returns how far it got: `end`
   * when all was written, less when the ring is full (call again with the
   * rest). Nothing is visible to the consumer until `publish()`. A record is
   * at most 2^31 - 1 bytes (`end`): each frame carries its record's length as
   * an Int32 (the encoder refuses larger values, `Encoder.MAX_BYTES`).
   */
  write(
    kind: number,
    seq: number,
    src: Uint8Array,
    start: number,
    end: number,
  ): number {
    if (start === 0 && end <= this.maxPayload) {
      return this.#writeFrame(kind, seq, src, 0, end, end) ? end : 0;
    }
    return this.writeFragments(kind, seq, src, start, end, end, false);
  }

  /**
   * Writes `src[start, end)` as fragments of a record of `total` bytes,
   * which goes on after `end` if `more` (its next part is written by the
   * next call), as far as there is room; returns how far it got, as `write`.
   */
  writeFragments(
    kind: number,
    seq: number,
    src: Uint8Array,
    start: number,
    end: number,
    total: number,
    more: boolean,
  ): number {
    while (start < end) {
      const length = Math.min(end - start, this.maxPayload);
      const flags = kind | Ring.FRAGMENT |
        (more || start + length < end ? Ring.MORE : 0);
      if (!this.#writeFrame(flags, seq, src, start, start + length, total)) {
        return start;
      }
      start += length;
    }
    return end;
  }

  /**
   * Writes `src[start, end)`, at most `maxPayload` bytes, as one whole record
   * (a record that starts inside a larger buffer); false when the ring is full.
   */
  writeRecord(
    kind: number,
    seq: number,
    src: Uint8Array,
    start: number,
    end: number,
  ): boolean {
    return this.#writeFrame(kind, seq, src, start, end, end - start);
  }

  /** Writes a frame with no payload (TASK_DONE, STOP); false when the ring is full. */
  writeEmpty(kind: number, seq: number): boolean {
    return this.#writeFrame(kind, seq, null, 0, 0, 0);
  }

  #writeFrame(
    kind: number,
    seq: number,
    src: Uint8Array | null,
    start: number,
    end: number,
    total: number,
  ): boolean {
    const length = end - start;
    const size = (Ring.FRAME_BYTES + length + 7) & ~7;
    let offset = this.#head & (this.capacity - 1);
    const contiguous = this.capacity - offset;
    const needed = size > contiguous ? size + contiguous : size;
    if (this.capacity - ((this.#head - this.#tailSeen) | 0) < needed) {
      // The cached tail may be stale (too old, never too new): only when it
      // says "full" is the shared tail worth a load.
      this.#tailSeen = Atomics.load(this.control, Ring.TAIL);
      if (this.capacity - ((this.#head - this.#tailSeen) | 0) < needed) {
        return false;
      }
    }
    const view = this.view;
    if (size > contiguous) {
      view.setInt32(offset, Ring.PAD, true);
      this.#head = (this.#head + contiguous) | 0;
      offset = 0;
    }
    view.setInt32(offset, length, true);
    view.setInt32(offset + 4, seq, true);
    view.setInt32(offset + 8, kind, true);
    view.setInt32(offset + 12, total, true);
    if (src !== null && length > 0) {
      const payload = offset + Ring.FRAME_BYTES;
      if (length <= 16) {
        // A loop beats set()+subarray() for the tiny records of the hot path.
        const bytes = this.bytes;
        for (let i = 0; i < length; i++) bytes[payload + i] = src[start + i]!;
      } else {
        this.bytes.set(src.subarray(start, end), payload);
      }
    }
    this.#head = (this.#head + size) | 0;
    return true;
  }

  /** Makes written records visible; returns whether there was anything new. */
  publish(): boolean {
    // Only this thread stores HEAD, so the load is exact; the seq-cst store
    // orders every payload write before the new head.
    if (Atomics.load(this.control, Ring.HEAD) === this.#head) return false;
    Atomics.store(this.control, Ring.HEAD, this.#head);
    return true;
  }

  /** Whether the producer has written records it has not published. */
  get unpublished(): boolean {
    // Exact: only this thread stores HEAD.
    return Atomics.load(this.control, Ring.HEAD) !== this.#head;
  }

  // ---- consumer ----

  /** Loads the shared tail and head; call before peeking (under the link lock if shared). */
  beginRead(): void {
    // The tail is exact (this consumer owns it now); the head may be stale,
    // and peek() loads it again before it reports the ring empty.
    this.#tail = Atomics.load(this.control, Ring.TAIL);
    this.#headSeen = Atomics.load(this.control, Ring.HEAD);
  }

  /** Releases what was consumed and wakes the producer if it waits for room. */
  releaseRead(): void {
    if (Atomics.load(this.control, Ring.TAIL) === this.#tail) return;
    // Every read of the records consumed happened before this store, so the
    // producer may overwrite them once it sees the new tail.
    Atomics.store(this.control, Ring.TAIL, this.#tail);
    Bell.ring(this.control, Ring.SPACE_BELL);
  }

  /**
   * Whether a record is published and not consumed (a cheap check for
   * spinning). Lock-free, so it may be stale either way: a record published
   * just now may be missed, and one another consumer just took may be seen.
   */
  hasData(): boolean {
    return Atomics.load(this.control, Ring.HEAD) !==
      Atomics.load(this.control, Ring.TAIL);
  }

  /** Offset of the next record's frame, or -1 if none is published. */
  peek(): number {
    for (;;) {
      if (this.#tail === this.#headSeen) {
        // The head seen is stale only towards the past: load it once more.
        this.#headSeen = Atomics.load(this.control, Ring.HEAD);
        if (this.#tail === this.#headSeen) return -1;
      }
      const offset = this.#tail & (this.capacity - 1);
      const length = this.view.getInt32(offset, true);
      if (length === Ring.PAD) {
        this.#tail = (this.#tail + this.capacity - offset) | 0;
        continue;
      }
      this.#peeked = (Ring.FRAME_BYTES + length + 7) & ~7;
      return offset;
    }
  }

  /** Consumes the record returned by the last `peek()`. */
  advance(): void {
    this.#tail = (this.#tail + this.#peeked) | 0;
  }

  /** Payload length of the frame at `offset`. */
  lengthAt(offset: number): number {
    return this.view.getInt32(offset, true);
  }

  /** Sequence number of the frame at `offset`. */
  seqAt(offset: number): number {
    return this.view.getInt32(offset + 4, true);
  }

  /** Kind and flags of the frame at `offset`. */
  kindAt(offset: number): number {
    return this.view.getInt32(offset + 8, true);
  }

  /** Total length of the record a fragment at `offset` belongs to. */
  totalAt(offset: number): number {
    return this.view.getInt32(offset + 12, true);
  }
}
