/**
 * What coordinators and worker hosts say to each other on JetStream: the
 * names of streams and subjects, the messages, and how to connect.
 *
 * Per remote stage of a run, one work-queue stream `MPIPE_<run>_<stage>`
 * holds two subjects: `mpipe.<run>.<stage>.in`, the batches of tasks that
 * the hosts share through the durable consumer `hosts`, and
 * `mpipe.<run>.<stage>.out`, the hosts' answers, read by the stage's bridge
 * through the durable consumer `bridge`; and `mpipe.<run>.<stage>.alone.<k>`
 * counts the runs of task k alone on a host (no consumer reads them; see
 * `host.ts`). The stream `MPIPE_STAGES` holds one
 * announcement per live stage, `mpipe.stages.<run>.<stage>`, which every
 * host watches: the stage's spec, signed with the coordinator's Ed25519 key
 * (see `signAnnouncement`), and announced again every `ANNOUNCE_EVERY_MS`.
 * Message bodies are the library's own codec (`codec.ts`).
 *
 * Each batch carries a random token of its own (`TOKEN_BYTES`), which only
 * the hosts it is delivered to read, and an answer or a refusal counts only
 * if it echoes its batch's token: a client that did not receive the batch
 * cannot answer for its tasks.
 *
 * @module
 */

import { Decoder, Encoder } from "../shared_memory/codec.ts";
import type { RemoteTarget } from "../stage/cluster.ts";
import { checkObject } from "../checks.ts";
import {
  connect,
  credsAuthenticator,
  type NatsConnection,
  type NodeConnectionOptions,
} from "./connection.ts";

/** The version of these messages; a host refuses a stage of another. */
export const PROTOCOL = 2;

/** How often a live stage is announced again (each time newly signed). */
export const ANNOUNCE_EVERY_MS = 10_000;

/**
 * How long an announcement holds: a host refuses a signed announcement
 * issued longer ago than this (a replay), and stops serving a stage that
 * was not announced again for this long (its coordinator is gone).
 */
export const ANNOUNCE_TTL_MS = 60_000;

/** The bytes of a batch's token. */
export const TOKEN_BYTES = 16;

/** The stream of stage announcements, and its subjects' prefix. */
export const STAGES_STREAM = "MPIPE_STAGES";
export const STAGES_SUBJECTS = "mpipe.stages.>";

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
 *   MANY or FAILED: ONE is followed by one framed result, MANY by a LEB128
 *   count and that many, FAILED by the framed error.
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
): Uint8Array {
  const writer = new MessageWriter();
  writeAnswerHeader(writer, count, from, token, worker, host);
  const length = encoder.encode(errorValue(encoder, error));
  const record = encoder.bytes.slice(0, length);
  for (let i = 0; i < count; i++) {
    writer.u8(FAILED);
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

/**
 * How to reach the NATS servers: the options of `JetStreamCluster.connect`
 * and of a worker host that concern the connection. Every field is plain
 * data, so that the options travel to the workers that connect on their own.
 *
 * @example A user account over TLS with a private CA
 * ```ts ignore
 * import type { ConnectionOptions } from "@mpipe/mpipe/jetstream";
 * import assert from "node:assert/strict";
 *
 * const connection: ConnectionOptions = {
 *   servers: "tls://nats.example.com:4222",
 *   user: "mpipe",
 *   pass: Deno.env.get("MPIPE_NATS_PASS"),
 *   tls: { caFile: "/etc/mpipe/ca.pem" },
 * };
 * assert.equal(connection.user, "mpipe");
 * ```
 */
export interface ConnectionOptions {
  /** The servers, `host:port` or a `nats://` / `tls://` URL, one or several. */
  servers: string | string[];
  /** A name for the connection, shown by the server (`nats-server` monitoring, logs). */
  name?: string;
  /** A user name (with `pass`), for servers with user accounts. */
  user?: string;
  /** The user's password. */
  pass?: string;
  /** An authentication token, for servers that take one. */
  token?: string;
  /** The path of a `.creds` file (a user JWT and its NKey seed), for servers in operator mode. */
  credentials?: string;
  /**
   * TLS: `true` to require it with the system's trust, or files (PEM) for a
   * private CA and a client certificate.
   */
  tls?: boolean | {
    /** The CA certificate(s) to trust. */
    caFile?: string;
    /** The client certificate, for servers that verify clients. */
    certFile?: string;
    /** The client certificate's key. */
    keyFile?: string;
    /** Start TLS before the server's greeting (servers with `handshake_first`). */
    handshakeFirst?: boolean;
  };
}

/** A remote stage as its bridge announces it to the hosts. */
export interface StageSpec {
  protocol: number;
  /** The run, and the stage's index in it. */
  run: string;
  index: number;
  /** The stage's name, for errors. */
  name: string;
  /** The stage's stream and its two subjects. */
  stream: string;
  inSubject: string;
  outSubject: string;
  /** The prefix of the subjects of its tasks' runs alone (see host.ts). */
  aloneSubject: string;
  target: RemoteTarget;
  /** The worker class's constructor arguments. */
  args: unknown[];
  /** How many tasks each host worker runs at once. */
  concurrency: number;
  /** Milliseconds a host may hold a batch without a sign of life. */
  ackWait: number;
  /** How many times a task may lose its host while it runs alone before it fails. */
  maxAttempts: number;
  /** How many times a task may be delivered at all (the consumer's `max_deliver`). */
  maxDeliver: number;
  /** Milliseconds a task may run on a host (the stage's `taskTimeout`), or 0 for no limit. */
  taskTimeout: number;
  /** When it was announced (ms since the epoch, the coordinator's clock): a signed announcement older than `ANNOUNCE_TTL_MS` is a replay. */
  issued: number;
}

/**
 * An announcement: the spec's bytes, framed, then their Ed25519 signature
 * by `key`, framed (empty when the coordinator has no signing key).
 */
export async function announcementMessage(
  encoder: Encoder,
  spec: StageSpec,
  key: CryptoKey | null,
): Promise<Uint8Array> {
  const bytes = encodeMessage(encoder, spec);
  const signature = key === null ? new Uint8Array(0) : new Uint8Array(
    await crypto.subtle.sign("Ed25519", key, bytes as Uint8Array<ArrayBuffer>),
  );
  const writer = new MessageWriter(bytes.length + 80);
  writer.frame(bytes);
  writer.frame(signature);
  return writer.take();
}

/**
 * An announcement's spec, and whether one of the `trusted` keys signed it;
 * null if it is not an announcement at all.
 */
export async function readAnnouncement(
  decoder: Decoder,
  message: Uint8Array,
  trusted: readonly CryptoKey[],
): Promise<{ spec: StageSpec; signed: boolean } | null> {
  let bytes: Uint8Array;
  let signature: Uint8Array;
  let spec: StageSpec;
  try {
    const reader = new MessageReader(message);
    bytes = reader.recordBytes();
    signature = reader.recordBytes();
    if (reader.at !== message.length) return null;
    spec = decodeMessage(decoder, bytes) as StageSpec;
    if (typeof spec !== "object" || spec === null) return null;
  } catch {
    return null;
  }
  let signed = false;
  if (signature.length === 64) {
    for (const key of trusted) {
      const ok = await crypto.subtle.verify(
        "Ed25519",
        key,
        signature as Uint8Array<ArrayBuffer>,
        bytes as Uint8Array<ArrayBuffer>,
      );
      if (ok) {
        signed = true;
        break;
      }
    }
  }
  return { spec, signed };
}

/**
 * The keys as text: a prefix that says which key it is (and keeps a
 * command line from reading it as a flag), then base64url of a PKCS #8
 * Ed25519 private key (64 characters) or of a raw public key (43).
 */
const SIGNING_PREFIX = "mpipe-sk-";
const PUBLIC_PREFIX = "mpipe-pk-";
const SIGNING_KEY_CHARS = SIGNING_PREFIX.length + 64;
const PUBLIC_KEY_CHARS = PUBLIC_PREFIX.length + 43;

/**
 * A new Ed25519 key pair for signing announcements, as text (base64url):
 * `signingKey` for the coordinators (keep it secret), `publicKey` for the
 * hosts that trust them.
 */
export async function generateKeys(): Promise<
  { signingKey: string; publicKey: string }
> {
  const pair = await crypto.subtle.generateKey(
    { name: "Ed25519" },
    true,
    ["sign", "verify"],
  ) as CryptoKeyPair;
  const text = async (format: "pkcs8" | "raw", key: CryptoKey) =>
    base64url(new Uint8Array(await crypto.subtle.exportKey(format, key)));
  return {
    signingKey: SIGNING_PREFIX + await text("pkcs8", pair.privateKey),
    publicKey: PUBLIC_PREFIX + await text("raw", pair.publicKey),
  };
}

/** The two kinds of key text `generateKeys` makes, and how each is imported. */
const KEY_KINDS = {
  signing: {
    prefix: SIGNING_PREFIX,
    chars: SIGNING_KEY_CHARS,
    format: "pkcs8",
    usage: "sign",
    other: ": that is a public key, which the hosts trust",
  },
  public: {
    prefix: PUBLIC_PREFIX,
    chars: PUBLIC_KEY_CHARS,
    format: "raw",
    usage: "verify",
    other: ": that is a signing key, which only coordinators may hold",
  },
} as const;

/** Imports a key text of `kind` made by `generateKeys`; a `TypeError` names `where` if it is not one. */
async function importKey(
  kind: keyof typeof KEY_KINDS,
  text: string,
  where: string,
): Promise<CryptoKey> {
  const { prefix, chars, format, usage, other } = KEY_KINDS[kind];
  try {
    if (text.length !== chars || !text.startsWith(prefix)) {
      throw new Error(`not a ${kind} key`);
    }
    return await crypto.subtle.importKey(
      format,
      fromBase64url(text.slice(prefix.length)),
      { name: "Ed25519" },
      false,
      [usage],
    );
  } catch {
    const otherPrefix = kind === "signing" ? PUBLIC_PREFIX : SIGNING_PREFIX;
    throw new TypeError(
      `${where} must be a ${kind} key as \`deno run jsr:@mpipe/mpipe/host --new-keys\` prints it ("${prefix}" and ${
        chars - prefix.length
      } characters of base64url), got ${text.length} characters${
        text.startsWith(otherPrefix) ? other : ""
      }`,
    );
  }
}

/** Imports a signing key made by `generateKeys`; a `TypeError` names `where` if it is not one. */
export function importSigningKey(
  text: string,
  where: string,
): Promise<CryptoKey> {
  return importKey("signing", text, where);
}

/** Imports a public key made by `generateKeys`; a `TypeError` names `where` if it is not one. */
export function importPublicKey(
  text: string,
  where: string,
): Promise<CryptoKey> {
  return importKey("public", text, where);
}

function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(
    /=+$/,
    "",
  );
}

function fromBase64url(text: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new Error("not base64url");
  const binary = atob(
    text.replaceAll("-", "+").replaceAll("_", "/") +
      "=".repeat((4 - text.length % 4) % 4),
  );
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** The names of a run's stage `index`. */
export function stageNames(run: string, index: number): {
  stream: string;
  inSubject: string;
  outSubject: string;
  aloneSubject: string;
  announcement: string;
} {
  return {
    stream: `MPIPE_${run}_${index}`,
    inSubject: `mpipe.${run}.${index}.in`,
    outSubject: `mpipe.${run}.${index}.out`,
    aloneSubject: `mpipe.${run}.${index}.alone`,
    announcement: `mpipe.stages.${run}.${index}`,
  };
}

/** Checks connection options, throwing a `TypeError` that names a bad one. */
export function checkConnectionOptions(
  where: string,
  options: unknown,
): ConnectionOptions {
  const o = checkObject(where, "options", options);
  const servers = o.servers;
  if (
    !(typeof servers === "string" && servers !== "") &&
    !(Array.isArray(servers) && servers.length > 0 &&
      servers.every((s) => typeof s === "string" && s !== ""))
  ) {
    throw new TypeError(
      `${where}: 'options.servers' must be a server address ("127.0.0.1:4222") or an array of them, got ${
        JSON.stringify(servers)
      }`,
    );
  }
  for (const key of ["name", "user", "pass", "token", "credentials"]) {
    if (o[key] !== undefined && typeof o[key] !== "string") {
      throw new TypeError(
        `${where}: 'options.${key}' must be a string, got ${typeof o[key]}`,
      );
    }
  }
  if (
    o.tls !== undefined && typeof o.tls !== "boolean" &&
    (typeof o.tls !== "object" || o.tls === null)
  ) {
    throw new TypeError(
      `${where}: 'options.tls' must be true, false or { caFile, certFile, keyFile, handshakeFirst }`,
    );
  }
  return o as unknown as ConnectionOptions;
}

/** Connects to NATS with `options`; `role` names the connection when it has no name. */
export async function connectNats(
  options: ConnectionOptions,
  role: string,
): Promise<NatsConnection> {
  const nats: NodeConnectionOptions = {
    servers: options.servers,
    name: options.name === undefined ? role : `${options.name} (${role})`,
    // A request's TimeoutError then has no stack: it costs a third of the
    // client's CPU per publish otherwise (research, section 8).
    noAsyncTraces: true,
    // Keep trying while a server restarts: a run waits, it does not fail.
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
  };
  if (options.user !== undefined) nats.user = options.user;
  if (options.pass !== undefined) nats.pass = options.pass;
  if (options.token !== undefined) nats.token = options.token;
  if (options.credentials !== undefined) {
    nats.authenticator = credsAuthenticator(
      await Deno.readFile(options.credentials),
    );
  }
  if (options.tls === true) nats.tls = {};
  else if (typeof options.tls === "object") nats.tls = { ...options.tls };
  return await connect(nats);
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

/** Nanoseconds, as JetStream's durations are given, of `ms` milliseconds. */
export function nanosOf(ms: number): number {
  return Math.round(ms * 1_000_000);
}

/** The error code of a JetStream API error, if `error` is one. */
export function apiCode(error: unknown): number | undefined {
  const code = (error as { code?: unknown; api_error?: { err_code?: unknown } })
    ?.code;
  if (typeof code === "number") return code;
  const nested = (error as { api_error?: { err_code?: unknown } })?.api_error
    ?.err_code;
  return typeof nested === "number" ? nested : undefined;
}

export { Decoder, Encoder };

/** Whether a publish failed because no stream listens on the subject (or JetStream is not up yet). */
export function noResponders(error: unknown): boolean {
  const e = error as { name?: unknown; isNoResponders?: () => boolean };
  return e?.name === "JetStreamNotEnabled" || e?.name === "NoResponders" ||
    (e?.name === "RequestError" && e.isNoResponders?.() === true);
}

/**
 * Whether a publish failed for good: too large for the server, a subject
 * the client may not publish to, or a closed connection. Anything else (a
 * timeout, a reconnection, a restarting server) may pass.
 */
export function permanent(error: unknown): boolean {
  const name = (error as { name?: unknown })?.name;
  return name === "InvalidArgumentError" ||
    name === "InvalidSubjectError" ||
    name === "PermissionViolationError" ||
    name === "AuthorizationError" ||
    name === "ClosedConnectionError";
}
