/**
 * A bounded single-producer ring of variable-length records in a
 * SharedArrayBuffer, and the doorbell its waiters sleep on.
 *
 * These classes are shipped to stage workers by their source text
 * (`Function.prototype.toString`), so they refer only to globals and to each
 * other by name, and keep their constants as static fields.
 *
 * @module
 */

/**
 * A doorbell: a wake-up counter and a "someone may be waiting" flag, two
 * adjacent words of an `Int32Array`.
 *
 * Waiting takes three steps, in this order: read the counter (`arm`), then
 * re-check the condition, then sleep on the counter value read. Reading the
 * counter before raising the flag is what makes a wake-up impossible to lose: a
 * signaller that finds the flag raised bumps the counter, so the sleeper's
 * `Atomics.wait` returns at once even if the bump came before it slept.
 * Signallers check the flag first, so a bell nobody waits on costs one load.
 */
export class Bell {
  /** Offset of the wake-up counter from the bell's base index. */
  static readonly COUNTER = 0;
  /** Offset of the waiting flag from the bell's base index. */
  static readonly WAITING = 1;

  /** Reads the counter and raises the flag; re-check, then sleep on the result. */
  static arm(words: Int32Array, base: number): number {
    const counter = Atomics.load(words, base + Bell.COUNTER);
    Atomics.store(words, base + Bell.WAITING, 1);
    return counter;
  }

  /** Wakes every waiter, if the flag says there may be one. */
  static ring(words: Int32Array, base: number): void {
    if (
      Atomics.load(words, base + Bell.WAITING) !== 0 &&
      Atomics.exchange(words, base + Bell.WAITING, 0) !== 0
    ) {
      Atomics.add(words, base + Bell.COUNTER, 1);
      Atomics.notify(words, base + Bell.COUNTER);
    }
  }

  /**
   * Where this thread learns it was stopped: a word and the generation of the
   * worker; set by the worker runtime. A worker blocked in `Atomics.wait`
   * ignores `Worker.terminate()`, so the main thread raises the word, wakes
   * every sleeper, and a stopped worker unwinds from its next sleep.
   */
  static stop: { words: Int32Array; index: number; generation: number } | null =
    null;

  /** Whether this worker was stopped by its pipeline. */
  static stopped(): boolean {
    const stop = Bell.stop;
    return stop !== null &&
      Atomics.load(stop.words, stop.index) > stop.generation;
  }

  /** Throws if this worker was stopped, so that it unwinds and closes itself. */
  static checkStopped(): void {
    if (Bell.stopped()) {
      throw new Error("This worker was stopped by its pipeline");
    }
  }

  /**
   * `Atomics.wait` for workers, which throws once this worker was stopped.
   * It checks before sleeping too: a worker that was still starting when it
   * was stopped may come to sleep after the wake-ups (the main thread raises
   * the stop word before it wakes anyone, so one of the checks sees it).
   */
  static sleep(words: Int32Array, index: number, value: number): void {
    Bell.checkStopped();
    Atomics.wait(words, index, value);
    Bell.checkStopped();
  }

  /** Wakes every waiter unconditionally (used on stop and on failure). */
  static ringAlways(words: Int32Array, base: number): void {
    Atomics.store(words, base + Bell.WAITING, 0);
    Atomics.add(words, base + Bell.COUNTER, 1);
    Atomics.notify(words, base + Bell.COUNTER);
  }
}

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
 * (see `InputLink`).
 */
export class Ring {
  /** Word index of the published head (producer). */
  static readonly HEAD = 0;
  /** Base index of the producer's space doorbell. */
  static readonly SPACE_BELL = 1;
  /** Word index of the flag set once the stop record was consumed. */
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
  /** End of an ordered task that put no (more) results. */
  static readonly END = 2;
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
  // Consumer side, valid between beginRead() and endRead().
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
    const total = end;
    if (start === 0 && end <= this.maxPayload) {
      return this.#writeFrame(kind, seq, src, 0, end, total) ? end : 0;
    }
    while (start < end) {
      const length = Math.min(end - start, this.maxPayload);
      const more = start + length < end ? Ring.MORE : 0;
      const flags = kind | Ring.FRAGMENT | more;
      if (!this.#writeFrame(flags, seq, src, start, start + length, total)) {
        return start;
      }
      start += length;
    }
    return end;
  }

  /** Writes a frame with no payload (END, STOP); false when the ring is full. */
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
    // The seq-cst store orders every payload write before the new head.
    if (Atomics.load(this.control, Ring.HEAD) === this.#head) return false;
    Atomics.store(this.control, Ring.HEAD, this.#head);
    return true;
  }

  /** Whether the producer has written records it has not published. */
  get unpublished(): boolean {
    return Atomics.load(this.control, Ring.HEAD) !== this.#head;
  }

  // ---- consumer ----

  /** Loads the shared tail and head; call before peeking (under the link lock if shared). */
  beginRead(): void {
    this.#tail = Atomics.load(this.control, Ring.TAIL);
    this.#headSeen = Atomics.load(this.control, Ring.HEAD);
  }

  /** Releases what was consumed and wakes the producer if it waits for room. */
  endRead(): void {
    if (Atomics.load(this.control, Ring.TAIL) === this.#tail) return;
    Atomics.store(this.control, Ring.TAIL, this.#tail);
    Bell.ring(this.control, Ring.SPACE_BELL);
  }

  /** Whether a record is published and not consumed (a cheap check for spinning). */
  hasData(): boolean {
    return Atomics.load(this.control, Ring.HEAD) !==
      Atomics.load(this.control, Ring.TAIL);
  }

  /** Offset of the next record's frame, or -1 if none is published. */
  peek(): number {
    for (;;) {
      if (this.#tail === this.#headSeen) {
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
