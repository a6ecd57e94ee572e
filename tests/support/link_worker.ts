/**
 * Worker-side helpers for the link stress tests: a producer loop around a
 * `LinkWriter` and a consumer loop around a `LinkReader`, shipped to Web
 * Workers by source with the library's own classes, the same way
 * `stageWorkerScript()` in lib/worker_thread/script.ts ships the stage runtime.
 *
 * Everything below that runs in a worker refers only to globals and to the
 * shipped classes (`Bell`, `Ring`, `Encoder`, `Decoder`, `LinkReader`,
 * `LinkWriter`) and to the other shipped functions, by name.
 *
 * @module
 */

import {
  LinkReader,
  type ReadMode,
} from "../../lib/shared_memory/link_reader.ts";
import { LinkWriter } from "../../lib/shared_memory/link_writer.ts";
import { Ring } from "../../lib/shared_memory/ring.ts";
import { ENGINE_CLASSES, scriptUrl } from "../../lib/worker_thread/script.ts";

/** What a producer worker does. */
export interface ProducerConfig {
  role: "producer";
  /** The producer's number (0-7, across all groups), carried in every record. */
  index: number;
  /** The producer's ring of the link. */
  ring: SharedArrayBuffer;
  /** The link's control block (its doorbell and backlog). */
  link: SharedArrayBuffer;
  /** Bound on the link's backlog; 0 for none. */
  maxBacklog: number;
  /**
   * The link's NEXT_SEQ word for this producer's group when that group is
   * merged by sequence (`LinkReader.groupWord(group, LinkReader.NEXT_SEQ)`),
   * else -1.
   */
  nextSeqWord: number;
  /**
   * The records to write, as [kind, seq, tag, size] quadruples: kind and seq
   * go to the frame; END kinds are written with `putEmpty`; a DATA record's
   * value identifies it by (producer, tag) and carries `size` payload bytes
   * (a negative size makes it a plain number).
   */
  records: Int32Array;
  /** Publish after every this many records (the port publishes on its own when full). */
  publishEvery: number;
  /** A start barrier shared by every worker of the run: [arrived, go]. */
  barrier: SharedArrayBuffer;
  parties: number;
}

/** What a consumer worker does. */
export interface ConsumerConfig {
  role: "consumer";
  index: number;
  link: SharedArrayBuffer;
  rings: SharedArrayBuffer[];
  mode: ReadMode;
  /** Most records taken per claim. */
  claimMax: number;
  /** How many times to poll `hasData()` before sleeping. */
  spin: number;
  /** How many producers there are. */
  producers: number;
  /** Deliveries per record, at `producer * stride + tag`, counted with Atomics. */
  seen: SharedArrayBuffer;
  stride: number;
  /** Deliveries per stamp (the link's own sequence number), counted with Atomics. */
  stamps: SharedArrayBuffer;
  barrier: SharedArrayBuffer;
  parties: number;
}

/** A worker's report. */
export type WorkerReport =
  | {
    type: "done";
    role: "producer" | "consumer";
    index: number;
    /** Records written or received. */
    records: number;
    /** Claims that returned records, and sleeps on the doorbell. */
    claims: number;
    sleeps: number;
    /** What the consumer found wrong (empty when all is well). */
    errors: string[];
    /** What the consumer received, in order: [producer, tag, stamp] triples. */
    log: Int32Array;
  }
  | { type: "error"; role: string; index: number; message: string };

/** Payload byte `k` of record (producer, tag). */
export function payloadByte(producer: number, tag: number, k: number): number {
  return (producer * 131 + tag * 31 + k * 7 + 1) & 0xff;
}

/** The value a producer writes for record (producer, tag) of upstream task `seq`. */
export function makeRecordValue(
  producer: number,
  tag: number,
  seq: number,
  size: number,
): unknown {
  if (size < 0) return tag * 8 + producer;
  if (tag % 5 === 0) {
    // A string record: exercises text decoding straight from shared memory.
    let text = `${producer},${tag},${seq}|`;
    for (let k = 0; k < size; k++) {
      text += String.fromCharCode(k % 3 === 0 ? 0xe9 : 0x61 + (k % 26));
    }
    return text;
  }
  const data = new Uint8Array(size);
  for (let k = 0; k < size; k++) data[k] = payloadByte(producer, tag, k);
  return { p: producer, t: tag, s: seq, d: data };
}

/**
 * Checks a received value; returns [producer, tag] or a description of what
 * is wrong with it.
 */
export function checkRecordValue(value: unknown): [number, number] | string {
  if (typeof value === "number") {
    if (!Number.isInteger(value) || value < 0) return `bad number ${value}`;
    return [value & 7, value >>> 3];
  }
  if (typeof value === "string") {
    const bar = value.indexOf("|");
    const [p, t, s] = value.slice(0, bar).split(",").map(Number);
    if (bar < 0 || p === undefined || t === undefined || s === undefined) {
      return `bad string ${value.slice(0, 40)}`;
    }
    const size = value.length - bar - 1;
    const expected = makeRecordValue(p, t, s, size);
    return value === expected ? [p, t] : `string of (${p}, ${t}) is corrupt`;
  }
  const record = value as { p: number; t: number; s: number; d: Uint8Array };
  if (
    record === null || typeof record !== "object" ||
    !(record.d instanceof Uint8Array)
  ) {
    return `bad value ${String(value)}`;
  }
  const data = record.d;
  for (let k = 0; k < data.length; k++) {
    if (data[k] !== payloadByte(record.p, record.t, k)) {
      return `payload of (${record.p}, ${record.t}) differs at byte ${k} of ${data.length}`;
    }
  }
  return [record.p, record.t];
}

/** Waits until every party of the run has arrived, so they all start at once. */
export function awaitBarrier(buffer: SharedArrayBuffer, parties: number): void {
  const words = new Int32Array(buffer);
  if (Atomics.add(words, 0, 1) + 1 === parties) {
    Atomics.store(words, 1, 1);
    Atomics.notify(words, 1);
  } else {
    while (Atomics.load(words, 1) === 0) Atomics.wait(words, 1, 0);
  }
}

/** Writes the configured records to the link, then the stop record. */
export function runProducer(config: ProducerConfig): WorkerReport {
  const port = new LinkWriter([{
    ring: config.ring,
    bell: config.link,
    bellBase: LinkReader.BELL,
    link: config.link,
    maxBacklog: config.maxBacklog,
    nextSeqWord: config.nextSeqWord,
  }]);
  const records = config.records;
  const producer = config.index;
  awaitBarrier(config.barrier, config.parties);
  let written = 0;
  for (let k = 0; k < records.length; k += 4) {
    const kind = records[k]!;
    const seq = records[k + 1]!;
    if ((kind & 0xff) === Ring.TASK_DONE) {
      port.putEmpty(kind, seq);
    } else {
      const value = makeRecordValue(
        producer,
        records[k + 2]!,
        seq,
        records[k + 3]!,
      );
      port.put(value, kind, seq);
    }
    written++;
    if (written % config.publishEvery === 0) port.publish();
  }
  port.publish();
  port.putEmpty(Ring.STOP, 0);
  port.publish();
  return {
    type: "done",
    role: "producer",
    index: producer,
    records: written,
    claims: 0,
    sleeps: 0,
    errors: [],
    log: new Int32Array(0),
  };
}

/**
 * Claims records until every producer has stopped, the way a stage worker
 * does (claim, spin on `hasData()`, then arm / claim / sleep), and checks
 * each: its payload, that it is the first delivery of it, that each
 * producer's records come in order, and its stamp.
 */
export function runConsumer(config: ConsumerConfig): WorkerReport {
  const link = new LinkReader(config.link, config.rings, config.mode);
  const seen = new Int32Array(config.seen);
  const stamps = new Int32Array(config.stamps);
  const lastTag: number[] = [];
  for (let p = 0; p < config.producers; p++) lastTag.push(-1);
  const errors: string[] = [];
  const fail = (message: string) => {
    if (errors.length < 20) errors.push(message);
  };
  const values: unknown[] = [];
  const seqs: number[] = [];
  let log = new Int32Array(3 * 1024);
  let logged = 0;
  let received = 0;
  let claims = 0;
  let sleeps = 0;
  awaitBarrier(config.barrier, config.parties);
  for (;;) {
    let count = link.claim(values, seqs, config.claimMax);
    for (let spin = 0; count === 0 && spin < config.spin; spin++) {
      if (link.hasData()) count = link.claim(values, seqs, config.claimMax);
    }
    while (count === 0) {
      // Arm, re-check, sleep: a wake-up between the claim and the sleep is
      // not lost, because the producer bumps the counter read by arm().
      const counter = link.arm();
      count = link.claim(values, seqs, config.claimMax);
      if (count === 0) {
        link.sleep(counter);
        sleeps++;
      }
    }
    if (count < 0) break;
    if (count > config.claimMax) {
      fail(`claim() returned ${count} > ${config.claimMax}`);
    }
    claims++;
    for (let i = 0; i < count; i++) {
      link.taskStarted();
      const value = values[i];
      const stamp = seqs[i]!;
      values[i] = undefined;
      received++;
      const checked = checkRecordValue(value);
      if (typeof checked === "string") {
        fail(checked);
        continue;
      }
      const [p, tag] = checked;
      if (3 * logged + 3 > log.length) {
        const grown = new Int32Array(log.length * 2);
        grown.set(log);
        log = grown;
      }
      log.set([p, tag, stamp], 3 * logged++);
      if (p >= config.producers || tag < 0 || tag >= config.stride) {
        fail(`record (${p}, ${tag}) was never written`);
        continue;
      }
      if (Atomics.add(seen, p * config.stride + tag, 1) !== 0) {
        fail(`record (${p}, ${tag}) delivered again`);
      }
      if (tag <= lastTag[p]!) {
        fail(`record (${p}, ${tag}) came after (${p}, ${lastTag[p]})`);
      }
      lastTag[p] = tag;
      if (stamp < 0 || stamp >= stamps.length) {
        fail(`stamp ${stamp} out of range for (${p}, ${tag})`);
      } else if (Atomics.add(stamps, stamp, 1) !== 0) {
        fail(`stamp ${stamp} given twice`);
      }
    }
  }
  if (!link.stopped) fail("claim() returned -1 before the link stopped");
  return {
    type: "done",
    role: "consumer",
    index: config.index,
    records: received,
    claims,
    sleeps,
    errors,
    log: log.slice(0, 3 * logged),
  };
}

/** The worker's entry point: runs one config and posts its report. */
export function linkWorkerMain(config: ProducerConfig | ConsumerConfig): void {
  const post = (message: WorkerReport) =>
    (globalThis as unknown as { postMessage(message: unknown): void })
      .postMessage(message);
  try {
    post(
      config.role === "producer" ? runProducer(config) : runConsumer(config),
    );
  } catch (error) {
    post({
      type: "error",
      role: config.role,
      index: config.index,
      message: error instanceof Error
        ? `${error.name}: ${error.message}\n${error.stack}`
        : String(error),
    });
  }
}

/** A Blob URL of a worker script made of the shipped classes and the loops above. */
export function linkWorkerUrl(): string {
  return scriptUrl(
    [
      ...ENGINE_CLASSES,
      payloadByte,
      makeRecordValue,
      checkRecordValue,
      awaitBarrier,
      runProducer,
      runConsumer,
      linkWorkerMain,
    ],
    "self.onmessage = (event) => { self.onmessage = null; linkWorkerMain(event.data); };",
  );
}
