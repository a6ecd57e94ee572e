/**
 * The batches a remote stage's bridge sent, until each of their tasks is
 * settled, and the hosts' answers that settle them: each task once (a
 * redelivered batch is answered again), and only by an answer that echoes
 * its batch's token; the others are forged, dropped and counted.
 *
 * @module
 */

import type { RemoteFailure } from "../../stage/cluster.ts";
import type { TaskSettler } from "../../worker_thread/batch_runner.ts";
import {
  ANSWER,
  BATCH_HEADER,
  Decoder,
  MANY,
  MessageReader,
  NONE,
  ONE,
  REFUSED,
  sameToken,
  TOKEN_AT,
  TOKEN_BYTES,
} from "../messages.ts";

/** Tasks sent in one message, numbered from `from`, until each is settled. */
interface Sent {
  from: number;
  /** The batch's token: only an answer that echoes it counts. */
  token: Uint8Array;
  /** 1 for each task settled. */
  settled: Uint8Array;
  /** Tasks not yet settled. */
  left: number;
  /** Its sequence number in the stage's stream, once stored (else 0). */
  seq: number;
}

/** A bridge's sent batches with tasks not settled. */
export class SentBatches {
  /** The stage's name and output subject, for the report of forgeries. */
  readonly #stage: string;
  readonly #outSubject: string;
  readonly #decoder = new Decoder();
  /** Sent batches with tasks not settled, by their first task's number. */
  readonly #sent = new Map<number, Sent>();
  /** Answers and refusals dropped because they did not echo their batch's token (forged), and when that was last reported. */
  #forged = 0;
  #forgedReported = 0;
  /** The hosts whose answers settled tasks so far, and who hears of each new one (the dashboard shows them). */
  readonly #hosts = new Set<string>();
  readonly #onHosts: (hosts: string[]) => void;

  constructor(
    stage: string,
    outSubject: string,
    onHosts: (hosts: string[]) => void,
  ) {
    this.#stage = stage;
    this.#outSubject = outSubject;
    this.#onHosts = onHosts;
  }

  /** How many sent batches have tasks not settled. */
  get size(): number {
    return this.#sent.size;
  }

  /** A batch of `count` tasks numbered from `from` was sent with `token`. */
  add(from: number, count: number, token: Uint8Array): void {
    this.#sent.set(from, {
      from,
      token,
      settled: new Uint8Array(count),
      left: count,
      seq: 0,
    });
  }

  /** The batch sent from task `from` was stored as message `seq` of the stage's stream. */
  stored(from: number, seq: number): void {
    const sent = this.#sent.get(from);
    if (sent !== undefined) sent.seq = seq;
  }

  /** The stream sequence numbers of the stored batches with tasks not settled. */
  storedSeqs(): number[] {
    const seqs = [];
    for (const sent of this.#sent.values()) {
      if (sent.seq > 0) seqs.push(sent.seq);
    }
    return seqs;
  }

  /** Rejects every task not settled with `failure` (a host refused the stage), and forgets them. */
  rejectAll(settler: TaskSettler, failure: RemoteFailure): void {
    for (const sent of this.#sent.values()) {
      for (let i = 0; i < sent.settled.length; i++) {
        if (sent.settled[i] !== 1) {
          settler.reject(sent.from + i, failure);
        }
      }
    }
    this.#sent.clear();
    settler.flush();
  }

  /**
   * Settles the tasks an answer covers (each once: a repeat is dropped).
   * An answer counts only for the tasks of the batch whose token it echoes
   * (a batch split into single tasks gives them its token): the rest is
   * forged, dropped and counted. A genuine refusal is returned, as
   * `[host, reason]`.
   */
  answer(
    bytes: Uint8Array,
    settler: TaskSettler | null,
  ): [string, string] | null {
    if (settler === null || bytes.length < TOKEN_AT + TOKEN_BYTES) {
      this.forgery();
      return null;
    }
    const reader = new MessageReader(bytes);
    const kind = reader.u32();
    if (kind !== ANSWER && kind !== REFUSED) {
      this.forgery();
      return null;
    }
    const count = reader.u32();
    const from = reader.f64();
    reader.at = TOKEN_AT + TOKEN_BYTES;
    const batch = this.#sent.get(from);
    if (kind === REFUSED) {
      // A refusal answers a batch it was delivered.
      const owner = batch ?? this.#sentWith(from);
      if (owner === undefined) return null;
      if (!sameToken(bytes, TOKEN_AT, owner.token)) {
        this.forgery();
        return null;
      }
      reader.at = BATCH_HEADER;
      const [host, reason] = reader.record(this.#decoder) as [string, string];
      return [host, reason];
    }
    const worker = reader.i32();
    const host = reader.text();
    /** The batch last checked against the answer's token, and whether it matched. */
    let checked: Sent | undefined;
    let genuine = false;
    let forged = false;
    let settled = false;
    try {
      for (let i = 0; i < count; i++) {
        const tag = reader.u8();
        const n = tag === MANY ? reader.varint() : tag === NONE ? 0 : 1;
        // Most answers cover one whole batch; a redelivered batch is split
        // into single tasks, each answered on its own.
        const task = from + i;
        const owner = batch !== undefined && i < batch.settled.length
          ? batch
          : this.#sentWith(task);
        if (owner !== undefined && owner !== checked) {
          checked = owner;
          genuine = sameToken(bytes, TOKEN_AT, owner.token);
          if (!genuine) forged = true;
        }
        const index = owner === undefined ? 0 : task - owner.from;
        if (owner === undefined || !genuine || owner.settled[index] === 1) {
          for (let j = 0; j < n; j++) reader.frame();
          continue;
        }
        owner.settled[index] = 1;
        settled = true;
        if (--owner.left === 0) this.#sent.delete(owner.from);
        if (tag === ONE) settler.resolve(task, reader.recordBytes());
        else if (tag === NONE) settler.resolve(task, null);
        else if (tag === MANY) {
          const records: Uint8Array[] = [];
          for (let j = 0; j < n; j++) records.push(reader.recordBytes());
          settler.resolveMany(task, records);
        } else {
          settler.reject(
            task,
            {
              mpipeRemote: {
                host,
                worker: worker < 0 ? undefined : worker,
                what: undefined,
              },
              error: reader.record(this.#decoder),
            } satisfies RemoteFailure,
          );
        }
      }
    } finally {
      settler.flush();
    }
    if (forged) this.forgery();
    if (settled && !this.#hosts.has(host)) {
      this.#hosts.add(host);
      this.#onHosts([...this.#hosts]);
    }
    return null;
  }

  /**
   * Counts an answer or refusal that did not come from a host that holds
   * its tasks (it lacks their batch's token), and reports the count on
   * stderr, at most every 10 s.
   */
  forgery(): void {
    this.#forged++;
    const now = performance.now();
    if (this.#forgedReported !== 0 && now - this.#forgedReported < 10_000) {
      return;
    }
    this.#forgedReported = now;
    console.warn(
      `mpipe: remote stage '${this.#stage}': dropped ${this.#forged} answer(s) that no host holding their tasks sent (they lack their batch's token): a client other than your hosts publishes to ${this.#outSubject}; see README "Securing the cluster"`,
    );
  }

  /** The sent batch that holds task `task`, if it is not settled. */
  #sentWith(task: number): Sent | undefined {
    for (const sent of this.#sent.values()) {
      if (task >= sent.from && task < sent.from + sent.settled.length) {
        return sent;
      }
    }
    return undefined;
  }
}
