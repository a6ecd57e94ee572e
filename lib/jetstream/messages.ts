/**
 * The messages on a remote stage's subjects, as bytes: a batch of tasks
 * (bridge to host), an answer (host to bridge), a refusal; how they are
 * written and read, split to fit a message, and checked.
 *
 * Each batch carries a random token of its own (`TOKEN_BYTES`), which only
 * the hosts it is delivered to read, and an answer or a refusal counts only
 * if it echoes its batch's token: a client that did not receive the batch
 * cannot answer for its tasks. Message bodies are the library's own codec
 * (`codec.ts`).
 *
 * @module
 */

import { Decoder, Encoder } from "../shared_memory/codec.ts";

/** The bytes of a batch's token. */
export const TOKEN_BYTES = 16;

/**
 * The kinds of message on a stage's subjects, their first 32-bit word. Each
 * message is little-endian words and framed records: a record is a task or
 * a result as the codec encodes it (as it lies in the rings), framed as its
 * length (LEB128: 7 bits a byte, low first) and its bytes. Tiny tasks are
 * the common case, and every byte costs the server (about 6 ns a byte a
 * hop, measured on 2.9.10), so nothing is padded.
 *
 * - BATCH (bridge to host): [u32 kind][u32 count][f64 first task's number]
 *   [16 bytes token], then `count` framed tasks.
 * - ANSWER (host to bridge): [u32 kind][u32 count][f64 first task's
 *   number][16 bytes token of the batch it answers][i32 host worker], the
 *   host's name (a framed UTF-8 string), then per task a byte NONE, ONE,
 *   MANY, FAILED, QUARANTINED or WORKER_LOST: ONE is followed by one framed
 *   result, MANY by a LEB128 count and that many, the others by the framed
 *   error.
 * - REFUSED (host to bridge): the header of the batch it refuses (its
 *   token echoed), then one framed record, the codec's `[host, reason]`.
 */
export const BATCH = 1;

export const ANSWER = 2;

export const REFUSED = 3;

/** What an answer says of one task. */
export const NONE = 0;

export const ONE = 1;

export const MANY = 2;

export const FAILED = 3;

/**
 * A failure of a quarantined task (it cost its stage's crashBudget of
 * hosts): the stage's `retry` does not send it again.
 */
export const QUARANTINED = 4;

/**
 * A failure that cost the task's host a worker (it called `Deno.exit()` or
 * `close()`): charged to the task's crashBudget by the stage's stand-in.
 */
export const WORKER_LOST = 5;

/** How an answer says that a task failed. */
export type FailureTag =
  | typeof FAILED
  | typeof QUARANTINED
  | typeof WORKER_LOST;

/** The bytes before a batch's first task (as `BatchRunner.SEND_HEADER`). */
export const BATCH_HEADER = 16 + TOKEN_BYTES;

/** Where a batch's (and an answer's) token starts. */
export const TOKEN_AT = 16;

/**
 * The bytes of a message's body that a publish may use: the server's
 * `max_payload` counts the headers too (`Nats-Msg-Id`, and the client's
 * own), which stay well under this margin.
 */
export function bodyLimit(maxPayload: number): number {
  return maxPayload - HEADER_ROOM;
}

/** The bytes kept for a message's headers (see `bodyLimit`). */
export const HEADER_ROOM = 512;

/** Writes a message: words and framed records, into a buffer that grows. */
export class MessageWriter {
  bytes: Uint8Array;
  view: DataView;
  length = 0;
  readonly #text = new TextEncoder();

  constructor(capacity = 1024) {
    this.bytes = new Uint8Array(capacity);
    this.view = new DataView(this.bytes.buffer);
  }

  /** Makes room for `n` more bytes. */
  reserve(n: number): void {
    const needed = this.length + n;
    if (needed <= this.bytes.length) return;
    const grown = new Uint8Array(Math.max(needed, 2 * this.bytes.length));
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
    this.view = new DataView(grown.buffer);
  }

  u32(value: number): void {
    this.reserve(4);
    this.view.setUint32(this.length, value, true);
    this.length += 4;
  }

  i32(value: number): void {
    this.reserve(4);
    this.view.setInt32(this.length, value, true);
    this.length += 4;
  }

  f64(value: number): void {
    this.reserve(8);
    this.view.setFloat64(this.length, value, true);
    this.length += 8;
  }

  u8(value: number): void {
    this.reserve(1);
    this.bytes[this.length++] = value;
  }

  /** Appends `value` (a non-negative integer) as LEB128. */
  varint(value: number): void {
    this.reserve(8);
    while (value >= 0x80) {
      this.bytes[this.length++] = (value & 0x7f) | 0x80;
      value = Math.floor(value / 128);
    }
    this.bytes[this.length++] = value;
  }

  /** Appends the framed record `bytes[start, start + n)`. */
  frame(bytes: Uint8Array, start = 0, n = bytes.length - start): void {
    this.varint(n);
    this.reserve(n);
    const out = this.bytes;
    const at = this.length;
    if (n <= 64) {
      // A tiny record (the common case): a loop beats a subarray and set().
      for (let i = 0; i < n; i++) out[at + i] = bytes[start + i]!;
    } else out.set(bytes.subarray(start, start + n), at);
    this.length += n;
  }

  /** Appends `value` encoded by `encoder`, framed. */
  record(encoder: Encoder, value: unknown): void {
    const n = encoder.encode(value);
    this.frame(encoder.bytes, 0, n);
  }

  /** Appends a string, framed, as UTF-8. */
  text(value: string): void {
    this.frame(this.#text.encode(value));
  }

  /** The message written so far, in bytes of its own. */
  take(): Uint8Array {
    return this.bytes.slice(0, this.length);
  }
}

/** Reads a message that a `MessageWriter` (or the runtime's raw records) made. */
export class MessageReader {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  at = 0;
  /** The length of the record `frame()` found last. */
  recordLength = 0;

  constructor(bytes: Uint8Array, at = 0) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.at = at;
  }

  u32(): number {
    const value = this.view.getUint32(this.at, true);
    this.at += 4;
    return value;
  }

  i32(): number {
    const value = this.view.getInt32(this.at, true);
    this.at += 4;
    return value;
  }

  f64(): number {
    const value = this.view.getFloat64(this.at, true);
    this.at += 8;
    return value;
  }

  u8(): number {
    return this.bytes[this.at++]!;
  }

  /** Reads a LEB128 integer; a `RangeError` if the message ends first (it is malformed). */
  varint(): number {
    let value = 0;
    let scale = 1;
    for (;;) {
      if (this.at >= this.bytes.length) throw truncated();
      const byte = this.bytes[this.at++]!;
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 128;
    }
  }

  /** Skips to after the next framed record; returns where its bytes start (its length in `recordLength`). */
  frame(): number {
    const n = this.varint();
    const start = this.at;
    if (start + n > this.bytes.length) throw truncated();
    this.recordLength = n;
    this.at = start + n;
    return start;
  }

  /** The next framed record, decoded by `decoder`. */
  record(decoder: Decoder): unknown {
    const start = this.frame();
    return decoder.decode(this.bytes, this.view, start);
  }

  /** The next framed record, as a view of its bytes (no copy). */
  recordBytes(): Uint8Array {
    const start = this.frame();
    return this.bytes.subarray(start, start + this.recordLength);
  }

  /** The next framed UTF-8 string. */
  text(): string {
    return new TextDecoder().decode(this.recordBytes());
  }
}

function truncated(): RangeError {
  return new RangeError("a malformed message: it ends inside a record");
}

/** A batch of already framed tasks, with its token, as one message. */
export function batchMessage(
  from: number,
  count: number,
  token: Uint8Array,
  frames: Uint8Array,
  start = 0,
  end = frames.length,
): Uint8Array {
  const message = new Uint8Array(BATCH_HEADER + end - start);
  writeBatchHeader(message, from, count, token);
  message.set(frames.subarray(start, end), BATCH_HEADER);
  return message;
}

/**
 * The header of a single task split from a batch whose host was lost (a
 * host runs it as a suspect: see host/worker_host.ts `#isolate`).
 */
export const LOST = "MPipe-Lost";

/** Whether a message is a single task split from a batch whose host was lost. */
export function splitFromLost(
  message: { data: Uint8Array; headers?: { has(key: string): boolean } },
): boolean {
  // Only a single task may carry LOST (parsing headers costs, per batch).
  const data = message.data;
  return data[4] === 1 && data[5] === 0 && data[6] === 0 && data[7] === 0 &&
    message.headers?.has(LOST) === true;
}

/**
 * A batch's tasks as messages of one task each (with the batch's token),
 * numbered `from` on; published with the LOST header and the message id
 * `t<task>`, so that a batch split twice gives each task once.
 */
export function singlesOf(data: Uint8Array): Uint8Array[] {
  const { from, count, token, reader } = readBatch(data);
  const singles: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    const start = reader.at;
    reader.frame();
    singles.push(batchMessage(from + i, 1, token, data, start, reader.at));
  }
  return singles;
}

/** Writes a batch's header, `kind` (BATCH or REFUSED) and its token included, into its first `BATCH_HEADER` bytes. */
export function writeBatchHeader(
  message: Uint8Array,
  from: number,
  count: number,
  token: Uint8Array,
  kind = BATCH,
): void {
  const view = new DataView(message.buffer, message.byteOffset, BATCH_HEADER);
  view.setUint32(0, kind, true);
  view.setUint32(4, count, true);
  view.setFloat64(8, from, true);
  message.set(token, TOKEN_AT);
}

/** A new random token for a batch. */
export function newToken(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(TOKEN_BYTES));
}

/** Whether `a[at, at + TOKEN_BYTES)` is `token`, in time that does not depend on where they differ. */
export function sameToken(
  a: Uint8Array,
  at: number,
  token: Uint8Array,
): boolean {
  if (a.length < at + TOKEN_BYTES) return false;
  let diff = 0;
  for (let i = 0; i < TOKEN_BYTES; i++) diff |= a[at + i]! ^ token[i]!;
  return diff === 0;
}

/** A batch's first task number, its tasks' count, its token (a view), and a reader at its first task. */
export function readBatch(
  message: Uint8Array,
): { from: number; count: number; token: Uint8Array; reader: MessageReader } {
  const reader = new MessageReader(message);
  if (reader.u32() !== BATCH) throw new TypeError("not a batch of tasks");
  const count = reader.u32();
  const from = reader.f64();
  const token = message.subarray(TOKEN_AT, TOKEN_AT + TOKEN_BYTES);
  reader.at = BATCH_HEADER;
  return { from, count, token, reader };
}

/** Writes an answer's header: kind, count, first task, token, worker, host. */
export function writeAnswerHeader(
  writer: MessageWriter,
  count: number,
  from: number,
  token: Uint8Array,
  worker: number,
  host: string,
): void {
  writer.u32(ANSWER);
  writer.u32(count);
  writer.f64(from);
  writer.reserve(TOKEN_BYTES);
  writer.bytes.set(token, writer.length);
  writer.length += TOKEN_BYTES;
  writer.i32(worker);
  writer.text(host);
}

/** An answer that every task of a batch failed with `error`. */
export function failedAnswer(
  encoder: Encoder,
  from: number,
  count: number,
  token: Uint8Array,
  host: string,
  worker: number,
  error: unknown,
  tag: FailureTag = FAILED,
): Uint8Array {
  const writer = new MessageWriter();
  writeAnswerHeader(writer, count, from, token, worker, host);
  const length = encoder.encode(errorValue(encoder, error));
  const record = encoder.bytes.slice(0, length);
  for (let i = 0; i < count; i++) {
    writer.u8(tag);
    writer.frame(record);
  }
  return writer.take();
}

/**
 * An answer as messages of at most `max` bytes each: itself if it fits,
 * else split by tasks; a task whose part alone is too large fails with a
 * `RangeError` instead.
 */
export function splitAnswer(
  encoder: Encoder,
  answer: Uint8Array,
  max: number,
): Uint8Array[] {
  if (answer.length <= max) return [answer];
  const reader = new MessageReader(answer);
  reader.u32();
  const count = reader.u32();
  const from = reader.f64();
  const token = answer.slice(TOKEN_AT, TOKEN_AT + TOKEN_BYTES);
  reader.at = TOKEN_AT + TOKEN_BYTES;
  const worker = reader.i32();
  const host = reader.text();
  const head = reader.at;
  const parts: Uint8Array[] = [];
  let writer: MessageWriter | null = null;
  let first = from;
  let tasks = 0;
  const start = () => {
    const w = new MessageWriter();
    writeAnswerHeader(w, 0, first, token, worker, host);
    return w;
  };
  const finish = () => {
    if (writer === null || tasks === 0) return;
    writer.view.setUint32(4, tasks, true);
    parts.push(writer.take());
    first += tasks;
    tasks = 0;
    writer = null;
  };
  for (let i = 0; i < count; i++) {
    const at = reader.at;
    const tag = reader.u8();
    const n = tag === MANY ? reader.varint() : tag === NONE ? 0 : 1;
    for (let j = 0; j < n; j++) reader.frame();
    let entry = answer.subarray(at, reader.at);
    if (head + entry.length > max) {
      // Too large even alone: the task fails.
      const failed = new MessageWriter();
      failed.u8(FAILED);
      failed.record(
        encoder,
        new RangeError(
          `The task's results encode to ${entry.length} bytes, more than the ${max} a message to the server may carry (its max_payload): return smaller results, or raise max_payload in the server's configuration`,
        ),
      );
      entry = failed.take();
    }
    if (writer !== null && writer.length + entry.length > max) finish();
    writer ??= start();
    writer.reserve(entry.length);
    writer.bytes.set(entry, writer.length);
    writer.length += entry.length;
    tasks++;
  }
  finish();
  return parts;
}

/** A refusal of a stage by `host`, for `reason`, in answer to the batch `batch` (its header and token). */
export function refusalMessage(
  encoder: Encoder,
  batch: Uint8Array,
  host: string,
  reason: string,
): Uint8Array {
  const writer = new MessageWriter();
  writer.reserve(BATCH_HEADER);
  const { from, count, token } = readBatch(batch);
  writeBatchHeader(writer.bytes, from, count, token, REFUSED);
  writer.length = BATCH_HEADER;
  writer.record(encoder, [host, reason]);
  return writer.take();
}

/** `error` if the codec can carry it, else an Error that says what it was. */
export function errorValue(encoder: Encoder, error: unknown): unknown {
  try {
    encoder.encode(error);
    return error;
  } catch {
    return new Error(String(error));
  }
}

/** Encodes `value` with the library's codec into bytes of its own. */
export function encodeMessage(encoder: Encoder, value: unknown): Uint8Array {
  const length = encoder.encode(value);
  return encoder.bytes.slice(0, length);
}

/** Decodes a message body that `encodeMessage` made. */
export function decodeMessage(decoder: Decoder, bytes: Uint8Array): unknown {
  // The decoder reads `bytes` and `view` at the same offsets, both from the
  // message's first byte.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return decoder.decode(bytes, view, 0);
}

export { Decoder, Encoder };
