/**
 * Single-threaded tests of `Ring`: framing, publishing, wrap-around with pad
 * frames, a full ring, fragments, empty records, and a model-checked fuzz of
 * random record sizes through a small ring.
 *
 * The producer and the consumer are two `Ring` objects on one buffer, as they
 * are in production (one per thread).
 */

import assert from "node:assert/strict";
import { Encoder } from "../lib/shared_memory/codec.ts";
import { LinkReader } from "../lib/shared_memory/link_reader.ts";
import { LinkWriter } from "../lib/shared_memory/link_writer.ts";
import { Ring } from "../lib/shared_memory/ring.ts";
import { Prng } from "./support/prng.ts";

// ---- helpers ----

/** A producer and a consumer on a fresh ring of `capacity` data bytes. */
function makeRing(capacity = 4096): { producer: Ring; consumer: Ring } {
  const buffer = Ring.allocate(capacity);
  return { producer: new Ring(buffer), consumer: new Ring(buffer) };
}

/** Bytes a frame with `length` payload bytes takes: header + payload, padded to 8. */
function frameSize(length: number): number {
  return Math.ceil((Ring.FRAME_BYTES + length) / 8) * 8;
}

/** `n` bytes of a recognisable pattern. */
function pattern(n: number, salt = 0): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(n);
  for (let i = 0; i < n; i++) bytes[i] = (i * 7 + salt * 13 + 1) & 0xff;
  return bytes;
}

/** The payload of the frame at `at`. */
function payloadAt(ring: Ring, at: number): Uint8Array {
  const start = at + Ring.FRAME_BYTES;
  return ring.bytes.slice(start, start + ring.lengthAt(at));
}

/** What a consumer sees of one frame. */
interface SeenFrame {
  offset: number;
  length: number;
  seq: number;
  kind: number;
  total: number;
  payload: Uint8Array;
}

/** Reads (and consumes) every published frame. */
function drain(consumer: Ring): SeenFrame[] {
  const frames: SeenFrame[] = [];
  consumer.beginRead();
  for (let at = consumer.peek(); at >= 0; at = consumer.peek()) {
    // A ring holds at most capacity / FRAME_BYTES frames: more means the
    // consumer is reading stale frames (and would loop forever).
    assert.ok(
      frames.length < consumer.capacity / Ring.FRAME_BYTES,
      "peek() returns more frames than the ring can hold",
    );
    frames.push({
      offset: at,
      length: consumer.lengthAt(at),
      seq: consumer.seqAt(at),
      kind: consumer.kindAt(at),
      total: consumer.totalAt(at),
      payload: payloadAt(consumer, at),
    });
    consumer.advance();
  }
  consumer.releaseRead();
  return frames;
}

// ---- layout ----

Deno.test("Ring.allocate and new Ring lay out the control block and the data area", () => {
  for (const capacity of [4096, 8192, 1 << 20]) {
    const buffer = Ring.allocate(capacity);
    assert.ok(buffer instanceof SharedArrayBuffer);
    assert.equal(buffer.byteLength, Ring.CONTROL_BYTES + capacity);
    const ring = new Ring(buffer);
    assert.equal(ring.capacity, capacity);
    assert.equal(ring.bytes.byteOffset, Ring.CONTROL_BYTES);
    assert.equal(ring.bytes.length, capacity);
    assert.equal(ring.view.byteOffset, Ring.CONTROL_BYTES);
    assert.equal(ring.control.length, Ring.CONTROL_BYTES / 4);
    // A quarter of the ring, frame included.
    assert.equal(ring.maxPayload + Ring.FRAME_BYTES, capacity / 4);
    assert.equal(ring.hasData(), false);
    assert.equal(ring.unpublished, false);
  }
});

// ---- write, publish, peek, advance ----

Deno.test("Ring.write is invisible until publish(), then peek/lengthAt/seqAt/kindAt/totalAt read it back", () => {
  const { producer, consumer } = makeRing();
  const first = pattern(10, 1);
  const second = pattern(100, 2);
  assert.equal(producer.write(Ring.DATA, 7, first, 0, first.length), 10);
  assert.equal(producer.write(Ring.DATA | Ring.LAST, 8, second, 0, 100), 100);
  assert.equal(producer.unpublished, true);
  consumer.beginRead();
  assert.equal(consumer.peek(), -1, "nothing is visible before publish()");
  assert.equal(consumer.hasData(), false);
  consumer.releaseRead();

  assert.equal(producer.publish(), true);
  assert.equal(producer.unpublished, false);
  assert.equal(producer.publish(), false, "nothing new to publish");
  assert.equal(consumer.hasData(), true);

  consumer.beginRead();
  const at = consumer.peek();
  assert.equal(at, 0);
  assert.equal(consumer.peek(), at, "peek() is idempotent until advance()");
  assert.equal(consumer.lengthAt(at), 10);
  assert.equal(consumer.seqAt(at), 7);
  assert.equal(consumer.kindAt(at), Ring.DATA);
  assert.equal(consumer.totalAt(at), 10);
  assert.deepEqual(payloadAt(consumer, at), first);
  consumer.advance();

  const next = consumer.peek();
  assert.equal(next, frameSize(10), "frames are padded to 8 bytes");
  assert.equal(consumer.lengthAt(next), 100);
  assert.equal(consumer.seqAt(next), 8);
  assert.equal(consumer.kindAt(next), Ring.DATA | Ring.LAST);
  assert.equal(consumer.kindAt(next) & 0xff, Ring.DATA);
  assert.deepEqual(payloadAt(consumer, next), second);
  consumer.advance();
  assert.equal(consumer.peek(), -1);
  // Still held by the consumer until releaseRead() releases it.
  assert.equal(consumer.hasData(), true);
  consumer.releaseRead();
  assert.equal(consumer.hasData(), false);
  assert.equal(
    Atomics.load(consumer.control, Ring.TAIL),
    Atomics.load(consumer.control, Ring.HEAD),
  );
});

Deno.test("Ring.peek sees records published while a read is in progress", () => {
  const { producer, consumer } = makeRing();
  consumer.beginRead();
  assert.equal(consumer.peek(), -1);
  producer.write(Ring.DATA, 1, pattern(5), 0, 5);
  producer.publish();
  const at = consumer.peek();
  assert.equal(at, 0);
  assert.equal(consumer.seqAt(at), 1);
  consumer.advance();
  consumer.releaseRead();
});

Deno.test("Ring.write copies payloads of every length byte for byte, from any offset of any source", () => {
  // Tiny payloads are copied in a loop, the others through set(): both,
  // from sources that start and end anywhere in their buffers.
  const lengths = Array.from({ length: 300 }, (_, i) => i);
  const big = pattern(4096, 5);
  const sources: [string, (n: number) => Uint8Array][] = [
    ["a buffer of its own", (n) => pattern(n, n)],
    ...[1, 2, 3, 4, 8].map((
      offset,
    ): [string, (n: number) => Uint8Array] => [
      `a view at byte ${offset}`,
      (n) => big.subarray(offset, offset + n),
    ]),
  ];
  for (const [name, source] of sources) {
    const { producer, consumer } = makeRing(1 << 16);
    for (const n of lengths) {
      const src = source(n);
      // Written from `start` within the source, as a resumed write would be.
      for (const start of [0, 1, 4]) {
        if (start !== 0 && start >= n) continue;
        assert.equal(producer.write(Ring.DATA, n, src, start, n), n);
        producer.publish();
        const [frame] = drain(consumer);
        assert.deepEqual(
          frame!.payload,
          src.slice(start, n),
          `${name}, length ${n}, from ${start}`,
        );
      }
    }
  }
});

Deno.test("Ring frames carry sequence numbers and kinds with their flags", () => {
  const { producer, consumer } = makeRing();
  const cases: [number, number][] = [
    [Ring.DATA, 0],
    [Ring.DATA, 1],
    [Ring.TASK_DONE, -1],
    [Ring.DATA | Ring.LAST, 2 ** 31 - 1],
    [Ring.TASK_DONE | Ring.LAST, -(2 ** 31)],
    [Ring.STOP, 0],
  ];
  for (const [kind, seq] of cases) {
    assert.equal(producer.write(kind, seq, pattern(3), 0, 3), 3);
  }
  producer.publish();
  const frames = drain(consumer);
  assert.deepEqual(
    frames.map((frame) => [frame.kind, frame.seq]),
    cases,
  );
  for (const frame of frames) {
    assert.equal(frame.kind & (Ring.FRAGMENT | Ring.MORE), 0);
  }
});

// ---- empty records ----

Deno.test("Ring.writeEmpty writes a frame without payload", () => {
  const { producer, consumer } = makeRing();
  assert.equal(producer.writeEmpty(Ring.TASK_DONE | Ring.LAST, 41), true);
  assert.equal(producer.writeEmpty(Ring.STOP, 0), true);
  // An empty DATA payload through write() is a frame of length 0 too.
  assert.equal(producer.write(Ring.DATA, 42, new Uint8Array(0), 0, 0), 0);
  producer.publish();
  const frames = drain(consumer);
  assert.deepEqual(
    frames.map((
      { offset, length, seq, kind, total },
    ) => [offset, length, seq, kind, total]),
    [
      [0, 0, 41, Ring.TASK_DONE | Ring.LAST, 0],
      [16, 0, 0, Ring.STOP, 0],
      [32, 0, 42, Ring.DATA, 0],
    ],
  );
});

// ---- wrap-around ----

Deno.test("Ring.write wraps around with a pad frame the consumer skips", () => {
  const { producer, consumer } = makeRing(4096);
  // Put the head 40 bytes before the end of the ring.
  const filler = frameSize(1000);
  let used = 0;
  let seq = 0;
  while (used + filler <= 4096 - 40) {
    assert.equal(
      producer.write(Ring.DATA, seq++, pattern(1000), 0, 1000),
      1000,
    );
    used += filler;
  }
  const rest = 4096 - 40 - used;
  assert.equal(
    producer.write(Ring.DATA, seq++, pattern(rest - 16), 0, rest - 16),
    rest - 16,
  );
  producer.publish();
  assert.equal(drain(consumer).length, seq);

  // 100 bytes do not fit in the last 40: a pad frame, then the record at 0.
  const record = pattern(100, 9);
  assert.equal(producer.write(Ring.DATA, 99, record, 0, 100), 100);
  producer.publish();
  assert.equal(producer.view.getInt32(4096 - 40, true), Ring.PAD);
  const [frame, ...others] = drain(consumer);
  assert.equal(others.length, 0);
  assert.equal(frame!.offset, 0);
  assert.equal(frame!.seq, 99);
  assert.deepEqual(frame!.payload, record);

  // A record that ends exactly at the end of the ring needs no pad.
  const { producer: p2, consumer: c2 } = makeRing(4096);
  assert.equal(p2.write(Ring.DATA, 0, pattern(1008), 0, 1008), 1008);
  assert.equal(p2.write(Ring.DATA, 1, pattern(1008), 0, 1008), 1008);
  assert.equal(p2.write(Ring.DATA, 2, pattern(1008), 0, 1008), 1008);
  p2.publish();
  drain(c2);
  assert.equal(p2.write(Ring.DATA, 3, pattern(1008), 0, 1008), 1008);
  assert.equal(p2.write(Ring.DATA, 4, pattern(8), 0, 8), 8);
  p2.publish();
  assert.deepEqual(
    drain(c2).map((f) => [f.offset, f.seq, f.length]),
    [[3072, 3, 1008], [0, 4, 8]],
  );
});

// ---- a full ring ----

Deno.test("Ring.write refuses a record when the ring is full and accepts it once the consumer releases room", () => {
  const { producer, consumer } = makeRing(4096);
  // 64 frames of 64 bytes fill the ring exactly.
  for (let i = 0; i < 64; i++) {
    assert.equal(
      producer.write(Ring.DATA, i, pattern(48, i), 0, 48),
      48,
      `record ${i}`,
    );
  }
  assert.equal(producer.write(Ring.DATA, 64, pattern(48), 0, 48), 0, "full");
  assert.equal(producer.write(Ring.DATA, 64, pattern(1), 0, 1), 0, "full");
  assert.equal(producer.writeEmpty(Ring.STOP, 0), false, "full");
  producer.publish();

  consumer.beginRead();
  const at = consumer.peek();
  assert.equal(consumer.seqAt(at), 0);
  consumer.advance();
  assert.equal(
    producer.write(Ring.DATA, 64, pattern(48), 0, 48),
    0,
    "not released yet",
  );
  consumer.releaseRead();

  assert.equal(
    producer.write(Ring.DATA, 64, pattern(48, 64), 0, 48),
    48,
    "released",
  );
  assert.equal(producer.writeEmpty(Ring.STOP, 0), false, "full again");
  producer.publish();
  const frames = drain(consumer);
  assert.deepEqual(
    frames.map((f) => f.seq),
    Array.from({ length: 64 }, (_, i) => i + 1),
  );
  frames.forEach((frame) =>
    assert.deepEqual(frame.payload, pattern(48, frame.seq))
  );
  assert.equal(producer.writeEmpty(Ring.STOP, 0), true);
});

Deno.test("Ring.write refuses a record that would overwrite unconsumed data after the wrap", () => {
  const { producer, consumer } = makeRing(4096);
  // Consume 1024 bytes at the start; 2048 bytes stay unconsumed in the middle.
  for (let i = 0; i < 3; i++) {
    producer.write(Ring.DATA, i, pattern(1008), 0, 1008);
  }
  producer.publish();
  consumer.beginRead();
  consumer.peek();
  consumer.advance();
  consumer.releaseRead();
  // 1024 free at the end, 1024 free at the start: a 1024-byte frame fits at
  // the end, then another at the start, then nothing.
  assert.equal(producer.write(Ring.DATA, 3, pattern(1008), 0, 1008), 1008);
  assert.equal(producer.write(Ring.DATA, 4, pattern(1008), 0, 1008), 1008);
  assert.equal(producer.write(Ring.DATA, 5, pattern(8), 0, 8), 0);
  producer.publish();
  assert.deepEqual(drain(consumer).map((f) => [f.seq, f.offset]), [
    [1, 1024],
    [2, 2048],
    [3, 3072],
    [4, 0],
  ]);
});

// ---- fragments ----

/** Reassembles fragmented records by hand from a list of frames. */
function reassemble(frames: SeenFrame[], maxPayload: number): Uint8Array[] {
  const records: Uint8Array[] = [];
  let partial: Uint8Array | null = null;
  let filled = 0;
  for (const frame of frames) {
    if (!(frame.kind & Ring.FRAGMENT)) {
      assert.equal(partial, null, "a whole record inside a fragmented one");
      records.push(frame.payload);
      continue;
    }
    if (partial === null) {
      partial = new Uint8Array(frame.total);
      filled = 0;
    }
    assert.equal(
      frame.total,
      partial.length,
      "every fragment carries the total",
    );
    if (frame.kind & Ring.MORE) {
      assert.equal(frame.length, maxPayload, "inner fragments are full");
    }
    partial.set(frame.payload, filled);
    filled += frame.length;
    if (!(frame.kind & Ring.MORE)) {
      assert.equal(filled, partial.length);
      records.push(partial);
      partial = null;
    }
  }
  assert.equal(partial, null, "an unfinished record");
  return records;
}

Deno.test("Ring.write sends a record of exactly maxPayload bytes in one frame and one byte more in two fragments", () => {
  const { producer, consumer } = makeRing(4096);
  const max = producer.maxPayload;
  assert.equal(producer.write(Ring.DATA, 1, pattern(max, 1), 0, max), max);
  assert.equal(
    producer.write(Ring.DATA, 2, pattern(max + 1, 2), 0, max + 1),
    max + 1,
  );
  producer.publish();
  const frames = drain(consumer);
  assert.deepEqual(
    frames.map(({ length, seq, kind, total }) => [length, seq, kind, total]),
    [
      [max, 1, Ring.DATA, max],
      [max, 2, Ring.DATA | Ring.FRAGMENT | Ring.MORE, max + 1],
      [1, 2, Ring.DATA | Ring.FRAGMENT, max + 1],
    ],
  );
  assert.deepEqual(reassemble(frames, max), [
    pattern(max, 1),
    pattern(max + 1, 2),
  ]);
});

Deno.test("Ring.write fragments a record larger than maxPayload, flagging FRAGMENT and MORE", () => {
  const { producer, consumer } = makeRing(4096);
  const max = producer.maxPayload;
  const record = pattern(Math.floor(max * 2.5), 5);
  const kind = Ring.DATA | Ring.LAST;
  assert.equal(
    producer.write(kind, 77, record, 0, record.length),
    record.length,
  );
  producer.publish();
  const frames = drain(consumer);
  assert.equal(frames.length, 3);
  assert.deepEqual(
    frames.map((f) => [f.length, f.seq, f.kind, f.total]),
    [
      [max, 77, kind | Ring.FRAGMENT | Ring.MORE, record.length],
      [max, 77, kind | Ring.FRAGMENT | Ring.MORE, record.length],
      [record.length - 2 * max, 77, kind | Ring.FRAGMENT, record.length],
    ],
  );
  assert.deepEqual(reassemble(frames, max), [record]);
});

Deno.test("Ring.write returns how far it got when fragments fill the ring, and resumes from there", () => {
  const { producer, consumer } = makeRing(4096);
  const max = producer.maxPayload;
  // Larger than the whole ring: it can only go through in parts.
  const record = pattern(max * 5 + 123, 6);
  const done = producer.write(Ring.DATA, 5, record, 0, record.length);
  assert.equal(done, 4 * max, "four full fragments fill a 4096-byte ring");
  assert.equal(producer.write(Ring.DATA, 5, record, done, record.length), done);
  producer.publish();
  const frames: SeenFrame[] = drain(consumer);
  assert.equal(frames.length, 4);

  let resumed = producer.write(Ring.DATA, 5, record, done, record.length);
  assert.equal(resumed, record.length);
  producer.publish();
  frames.push(...drain(consumer));
  assert.deepEqual(
    frames.map((f) => [f.length, f.kind, f.total]),
    [
      [max, Ring.DATA | Ring.FRAGMENT | Ring.MORE, record.length],
      [max, Ring.DATA | Ring.FRAGMENT | Ring.MORE, record.length],
      [max, Ring.DATA | Ring.FRAGMENT | Ring.MORE, record.length],
      [max, Ring.DATA | Ring.FRAGMENT | Ring.MORE, record.length],
      [max, Ring.DATA | Ring.FRAGMENT | Ring.MORE, record.length],
      [123, Ring.DATA | Ring.FRAGMENT, record.length],
    ],
  );
  assert.deepEqual(reassemble(frames, max), [record]);

  // Resuming exactly at the last fragment still marks it as a fragment.
  const small = pattern(max + 10, 8);
  resumed = producer.write(Ring.DATA, 6, small, max, small.length);
  assert.equal(resumed, small.length);
  producer.publish();
  const [last] = drain(consumer);
  assert.equal(last!.kind, Ring.DATA | Ring.FRAGMENT);
  assert.equal(last!.total, small.length);
  assert.deepEqual(last!.payload, small.subarray(max));
});

// ---- byte counters ----

/**
 * Puts a ring in the state it reaches after `start` bytes went through it
 * (the constructor picks up the head and tail from the control words), runs
 * records through it and checks each.
 */
function runFromCounter(start: number, records: number): void {
  const buffer = Ring.allocate(4096);
  const control = new Int32Array(buffer, 0, Ring.CONTROL_BYTES >> 2);
  control[Ring.HEAD] = start | 0;
  control[Ring.TAIL] = start | 0;
  const producer = new Ring(buffer);
  const consumer = new Ring(buffer);
  for (let i = 0; i < records; i++) {
    const payload = pattern(100 + (i % 7) * 50, i);
    assert.equal(
      producer.write(Ring.DATA, i, payload, 0, payload.length),
      payload.length,
      `write ${i}`,
    );
    producer.publish();
    const frames = drain(consumer);
    assert.equal(
      frames.length,
      1,
      `record ${i} after ${start} bytes: ${frames.length} frames`,
    );
    assert.equal(frames[0]!.seq, i);
    assert.deepEqual(frames[0]!.payload, payload);
    assert.equal(consumer.hasData(), false);
  }
}

Deno.test("Ring keeps working from a fresh start (control run for the counter tests)", () => {
  runFromCounter(0, 200);
  runFromCounter(2 ** 31 - 8192, 20); // Stays below 2^31.
});

Deno.test("Ring keeps working once its byte counters pass 2^31 (after 2 GiB of records)", () => {
  // The counters are meant to wrap at 2^32; they pass 2^31 after 2 GiB of
  // traffic, a few minutes of a busy pipeline.
  runFromCounter(2 ** 31 - 1024, 200);
});

Deno.test("Ring keeps working once its byte counters wrap at 2^32", () => {
  runFromCounter(2 ** 32 - 1024, 200);
});

// ---- fuzz ----

/** A frame as the model expects it. */
interface ModelFrame {
  /** Byte counter of the frame (after any pad frame before it). */
  position: number;
  offset: number;
  size: number;
  length: number;
  seq: number;
  kind: number;
  total: number;
  payload: Uint8Array;
}

/**
 * A reference model of the ring, written from its documented format: frames
 * of 16 bytes + payload padded to 8, a pad frame where a frame would cross
 * the end of the buffer, byte counters that wrap at 2^32, and room = capacity
 * minus what the consumer has not released.
 */
class RingModel {
  readonly capacity: number;
  readonly maxPayload: number;
  head: number;
  /** Head as of the last publish. */
  published: number;
  /** Released by the consumer (releaseRead). */
  tail: number;
  /** Written frames not yet consumed, oldest first. */
  frames: ModelFrame[] = [];
  /** How many of `frames` are published. */
  visible = 0;

  constructor(capacity: number, start: number) {
    this.capacity = capacity;
    this.maxPayload = capacity / 4 - Ring.FRAME_BYTES;
    this.head = this.published = this.tail = start >>> 0;
  }

  /** Adds a frame if it fits; returns whether it did. */
  writeFrame(
    length: number,
    seq: number,
    kind: number,
    total: number,
    payload: Uint8Array,
  ): boolean {
    const size = frameSize(length);
    let offset = this.head & (this.capacity - 1);
    const contiguous = this.capacity - offset;
    const needed = size > contiguous ? size + contiguous : size;
    if (this.capacity - ((this.head - this.tail) >>> 0) < needed) return false;
    if (size > contiguous) {
      this.head = (this.head + contiguous) >>> 0;
      offset = 0;
    }
    this.frames.push({
      position: this.head,
      offset,
      size,
      length,
      seq,
      kind,
      total,
      payload,
    });
    this.head = (this.head + size) >>> 0;
    return true;
  }

  /**
   * What `Ring.write(kind, seq, data, start, data.length)` should return: one
   * plain frame for a small record written whole, else fragments of
   * maxPayload bytes, each flagged FRAGMENT and all but the last MORE, each
   * carrying the record's total length; as many as fit.
   */
  write(kind: number, seq: number, data: Uint8Array, start: number): number {
    const end = data.length;
    if (start === 0 && end <= this.maxPayload) {
      return this.writeFrame(end, seq, kind, end, data) ? end : 0;
    }
    while (start < end) {
      const length = Math.min(end - start, this.maxPayload);
      const more = start + length < end ? Ring.MORE : 0;
      const flags = kind | Ring.FRAGMENT | more;
      const part = data.subarray(start, start + length);
      if (!this.writeFrame(length, seq, flags, end, part)) break;
      start += length;
    }
    return start;
  }

  publish(): boolean {
    const changed = this.published !== this.head;
    this.published = this.head;
    this.visible = this.frames.length;
    return changed;
  }
}

/**
 * Random record sizes, biased toward the interesting ones. Never 0: an
 * empty payload goes through writeEmpty() (write() returns 0 for it whether
 * or not it fit, so its result says nothing).
 */
function randomLength(random: Prng, maxPayload: number): number {
  const roll = random.next();
  if (roll < 0.35) return random.int(1, 40);
  if (roll < 0.65) return random.int(41, maxPayload);
  if (roll < 0.72) {
    return random.pick([
      maxPayload - 1,
      maxPayload,
      maxPayload + 1,
      2 * maxPayload,
    ]);
  }
  if (roll < 0.95) return random.int(maxPayload + 1, 3 * maxPayload);
  return random.int(3 * maxPayload, 6 * maxPayload); // Larger than the ring.
}

const KINDS = [
  Ring.DATA,
  Ring.DATA | Ring.LAST,
  Ring.TASK_DONE,
  Ring.TASK_DONE | Ring.LAST,
];

/** A record on its way into the ring. */
interface Outgoing {
  kind: number;
  seq: number;
  data: Uint8Array;
  done: number;
}

/**
 * Drives a producer and a consumer on one ring with random operations (write
 * or resume a record, write an empty one, publish, read some frames, peek
 * without consuming, release), checking every frame, every byte, every
 * refusal and every `hasData()`/`publish()` answer against `RingModel`, and
 * reassembling fragments by hand. Returns how many records went through.
 */
function fuzzRing(
  seed: number,
  steps: number,
  capacity = 4096,
  start = 0,
): number {
  const random = new Prng(seed);
  const buffer = Ring.allocate(capacity);
  const control = new Int32Array(buffer, 0, Ring.CONTROL_BYTES >> 2);
  control[Ring.HEAD] = start | 0;
  control[Ring.TAIL] = start | 0;
  const producer = new Ring(buffer);
  const consumer = new Ring(buffer);
  const model = new RingModel(capacity, start);
  assert.equal(producer.maxPayload, model.maxPayload);

  // Producer side.
  let pending: Outgoing | null = null; // Filled the ring half way.
  const sent: Uint8Array[] = []; // Whole payloads, in order.
  // Consumer side.
  let reading = false;
  let consumerTail = model.tail; // What releaseRead() will release.
  let received = 0;
  let partial: { data: Uint8Array; filled: number } | null = null;
  let where = "";

  const writeSome = (record: Outgoing) => {
    const expected = model.write(
      record.kind,
      record.seq,
      record.data,
      record.done,
    );
    const wrote = producer.write(
      record.kind,
      record.seq,
      record.data,
      record.done,
      record.data.length,
    );
    assert.equal(
      wrote,
      expected,
      `${where}: write() of ${record.data.length} bytes from ${record.done}`,
    );
    if (record.done === 0 && wrote > 0) sent.push(record.data);
    record.done = wrote;
    return wrote === record.data.length;
  };

  const readFrame = (frame: ModelFrame, at: number) => {
    assert.equal(at, frame.offset, `${where}: offset`);
    assert.equal(consumer.lengthAt(at), frame.length, `${where}: length`);
    assert.equal(consumer.seqAt(at), frame.seq, `${where}: seq`);
    assert.equal(consumer.kindAt(at), frame.kind, `${where}: kind`);
    assert.equal(consumer.totalAt(at), frame.total, `${where}: total`);
    const payload = payloadAt(consumer, at);
    assert.deepEqual(payload, frame.payload, `${where}: payload`);
    if (frame.kind & Ring.FRAGMENT) {
      partial ??= { data: new Uint8Array(frame.total), filled: 0 };
      partial.data.set(payload, partial.filled);
      partial.filled += payload.length;
      if (frame.kind & Ring.MORE) return;
      assert.equal(partial.filled, partial.data.length, `${where}: fragments`);
      assert.deepEqual(partial.data, sent[received], `${where}: reassembled`);
      partial = null;
    } else {
      assert.equal(
        partial,
        null,
        `${where}: a frame inside a fragmented record`,
      );
      assert.deepEqual(payload, sent[received], `${where}: record`);
    }
    received++;
  };

  /** Reads up to `count` frames; may leave the last one peeked only. */
  const readSome = (count: number, peekOnly: number) => {
    if (!reading) {
      consumer.beginRead();
      reading = true;
    }
    for (let i = 0; i < count; i++) {
      const at = consumer.peek();
      if (model.visible === 0) {
        assert.equal(at, -1, `${where}: peek() with nothing published`);
        return;
      }
      const frame = model.frames[0]!;
      consumerTail = frame.position; // A pad frame before it is skipped.
      if (random.chance(0.1)) {
        assert.equal(consumer.peek(), at, `${where}: a second peek()`);
      }
      if (random.chance(peekOnly)) return;
      readFrame(frame, at);
      consumer.advance();
      consumerTail = (frame.position + frame.size) >>> 0;
      model.frames.shift();
      model.visible--;
    }
  };

  const release = () => {
    if (reading) consumer.releaseRead();
    reading = false;
    model.tail = consumerTail;
    assert.equal(
      consumer.hasData(),
      model.published !== model.tail,
      `${where}: hasData()`,
    );
  };

  for (let step = 0; step < steps; step++) {
    where = `seed ${seed}, step ${step}`;
    const action = random.next();
    if (action < 0.45) {
      if (pending !== null) {
        if (writeSome(pending)) pending = null;
      } else if (random.chance(0.08)) {
        const kind = random.pick([
          Ring.TASK_DONE,
          Ring.TASK_DONE | Ring.LAST,
          Ring.STOP,
        ]);
        const seq = random.nextU32() | 0;
        const empty = new Uint8Array(0);
        const fits = model.writeFrame(0, seq, kind, 0, empty);
        assert.equal(
          producer.writeEmpty(kind, seq),
          fits,
          `${where}: writeEmpty()`,
        );
        if (fits) sent.push(empty);
      } else {
        const record: Outgoing = {
          kind: random.pick(KINDS),
          seq: random.nextU32() | 0,
          data: random.bytes(randomLength(random, model.maxPayload)),
          done: 0,
        };
        if (!writeSome(record)) pending = record;
      }
    } else if (action < 0.6) {
      assert.equal(producer.unpublished, model.published !== model.head);
      assert.equal(producer.publish(), model.publish(), `${where}: publish()`);
    } else {
      readSome(random.int(0, 8), 0.05);
      if (random.chance(0.7)) release();
    }
  }

  // Finish: publish, drain and release until the pending record is through.
  where = `seed ${seed}, draining`;
  for (let round = 0; round < 100; round++) {
    if (pending !== null && writeSome(pending)) pending = null;
    producer.publish();
    model.publish();
    readSome(Infinity, 0);
    release();
    if (pending === null) break;
  }
  assert.equal(pending, null, "the pending record never went through");
  assert.equal(model.frames.length, 0, "frames were lost");
  assert.equal(received, sent.length, "records were lost");
  assert.equal(partial, null);
  assert.equal(consumer.hasData(), false);
  consumer.beginRead();
  assert.equal(consumer.peek(), -1, "more frames than were written");
  consumer.releaseRead();
  return received;
}

const RING_FUZZ_SEEDS = [1, 2, 3, 4, 5, 6, 7, 8, 99, 31337];
const RING_FUZZ_STEPS = 20_000;

for (const seed of RING_FUZZ_SEEDS) {
  Deno.test(`Ring carries random record sizes through a 4096-byte ring intact (seed ${seed})`, () => {
    const records = fuzzRing(seed, RING_FUZZ_STEPS);
    assert.ok(records > 1000, `only ${records} records went through`);
  });
}

Deno.test("Ring carries random record sizes through an 8192-byte ring intact", () => {
  fuzzRing(1234, RING_FUZZ_STEPS, 8192);
});

Deno.test("Ring carries random record sizes intact while its byte counters pass 2^31 and 2^32", () => {
  fuzzRing(77, RING_FUZZ_STEPS, 4096, 2 ** 31 - 50_000);
  fuzzRing(78, RING_FUZZ_STEPS, 4096, 2 ** 32 - 50_000);
});

// ---- issue 21, item 11: the buffers of a large record ----

/** Bytes of a large record: over `Encoder.KEEP_BYTES` (8 MiB). */
const LARGE = 9 * 2 ** 20;

/**
 * Sends `value` through a port and a link on one 64 KiB ring, in fragments,
 * claiming as the ring fills; returns the value read, the byte lengths of
 * the buffers `Encoder.free` freed, and of the large copies (`slice`) made
 * while reading.
 */
function throughLink(value: unknown): {
  read: unknown;
  freed: number[];
  copied: number[];
} {
  const freed: number[] = [];
  const copied: number[] = [];
  const free = Encoder.free;
  const slice = Uint8Array.prototype.slice;
  Encoder.free = (buffer: ArrayBuffer) => {
    freed.push(buffer.byteLength);
    free(buffer);
  };
  try {
    const ring = Ring.allocate(1 << 16);
    const control = new SharedArrayBuffer(LinkReader.bytes(1));
    const port = new LinkWriter([{
      ring,
      bell: control,
      bellBase: LinkReader.BELL,
      link: control,
      maxBacklog: 0,
      nextSeqWord: -1,
    }]);
    const link = new LinkReader(control, [ring], {
      shared: false,
      groups: [{ size: 1, merge: false }],
      bounded: false,
      blocking: false,
    });
    // The port encodes the whole record; the ring takes it fragment by
    // fragment, as the reader makes room.
    const encoded = port.encode(value);
    freed.length = 0;
    const writer = new Ring(ring);
    const values: unknown[] = [];
    const seqs: number[] = [];
    let written = 0;
    let count = 0;
    Uint8Array.prototype.slice = function (start, end) {
      const copy = slice.call(this, start, end);
      if (copy.length > 2 ** 20) copied.push(copy.length);
      return copy;
    };
    while (count === 0) {
      written = writer.write(Ring.DATA, 0, encoded, written, encoded.length);
      writer.publish();
      count = link.claim(values, seqs, 1);
    }
    assert.equal(written, encoded.length);
    return { read: values[0], freed, copied };
  } finally {
    Encoder.free = free;
    Uint8Array.prototype.slice = slice;
  }
}

Deno.test("A record that is one large byte run is reassembled into the value's own buffer: no copy to decode it", () => {
  const size = LARGE;
  const bytes = new Uint8Array(size).map((_, i) => i * 7);
  const floats = new Float64Array(bytes.buffer, 8, 16);
  const cases: [string, unknown][] = [
    ["Uint8Array", bytes],
    ["ArrayBuffer", bytes.buffer],
    ["a view at an offset", floats],
    ["DataView", new DataView(bytes.buffer, 3, 100)],
  ];
  for (const [name, value] of cases) {
    const { read, freed, copied } = throughLink(value);
    assert.deepEqual(read, value, name);
    assert.deepEqual(copied, [], `${name}: copied`);
    assert.deepEqual(freed, [], `${name}: nothing large to free`);
  }
  const { read } = throughLink(floats);
  assert.equal((read as Float64Array).byteOffset, 8);
  assert.equal((read as Float64Array).buffer.byteLength, size);
});

Deno.test("Any other large record is decoded from one reassembly buffer, freed as soon as it is decoded", () => {
  const data = new Uint8Array(LARGE).fill(9);
  for (const value of [{ data }, [1, data], "x".repeat(data.length)]) {
    const { read, freed } = throughLink(value);
    assert.deepEqual(read, value);
    assert.equal(freed.length, 1, "the reassembly buffer");
    assert.ok(freed[0]! > data.length);
  }
  // A resizable buffer keeps its own path: it is copied into a new one.
  const resizable = new ArrayBuffer(data.length, {
    maxByteLength: 2 * data.length,
  });
  const { read } = throughLink(resizable);
  assert.equal((read as ArrayBuffer).maxByteLength, 2 * data.length);
});

Deno.test("LinkWriter writes a large byte run from the value itself, not from a copy, and the reader gets the record whole", () => {
  const ring = Ring.allocate(1 << 26);
  const control = new SharedArrayBuffer(LinkReader.bytes(1));
  const port = new LinkWriter([{
    ring,
    bell: control,
    bellBase: LinkReader.BELL,
    link: control,
    maxBacklog: 0,
    nextSeqWord: -1,
  }]);
  const link = new LinkReader(control, [ring], {
    shared: false,
    groups: [{ size: 1, merge: false }],
    bounded: false,
    blocking: false,
  });
  const big = new Uint8Array(LARGE + 3).map((_, i) => i);
  const other = new Float32Array(LARGE / 4 + 1).fill(1.5);
  const values = [
    big,
    { a: big, b: "after", c: other, d: [1, big] },
    [7, other.buffer, "x", new DataView(big.buffer, 1, 5)],
  ];
  const set = Uint8Array.prototype.set;
  for (const value of values) {
    const copied: number[] = [];
    Uint8Array.prototype.set = function (source, offset) {
      const length = (source as ArrayLike<number>).length;
      // Copies into the ring are shared memory; a copy first is not.
      if (!(this.buffer instanceof SharedArrayBuffer) && length > 2 ** 20) {
        copied.push(length);
      }
      return set.call(this, source, offset);
    };
    try {
      port.put(value, Ring.DATA, 0);
    } finally {
      Uint8Array.prototype.set = set;
    }
    port.publish();
    assert.deepEqual(copied, [], "copied before writing");
    const read: unknown[] = [];
    assert.equal(link.claim(read, [], 1), 1);
    assert.deepEqual(read[0], value);
  }
});
