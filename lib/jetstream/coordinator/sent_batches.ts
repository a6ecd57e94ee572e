/**
 * The batches a remote stage's bridge sent, until each of their tasks is
 * settled, and the hosts' answers that settle them: each task once (a
 * redelivered batch is answered again), and only by an answer that echoes
 * its batch's token; the others are forged, dropped and counted.
 *
 * A task that failed is sent again under the stage's `retry`, alone and
 * with a token of its own: from then on only the answer to that send
 * counts for it, and the answers to its earlier sends are stale, dropped
 * as repeats. A task that cost its host a worker (`WORKER_LOST`) is charged
 * for it, and quarantined at the stage's crashBudget, as a local stage's
 * task is for its lost workers.
 *
 * @module
 */

import type { RemoteFailure } from "../../stage/cluster.ts";
import type {
  Rejection,
  TaskSettler,
} from "../../worker_thread/batch_runner.ts";
import {
  ANSWER,
  BATCH_HEADER,
  Decoder,
  MANY,
  MessageReader,
  NONE,
  ONE,
  QUARANTINED,
  REFUSED,
  sameToken,
  TOKEN_AT,
  TOKEN_BYTES,
  WORKER_LOST,
} from "../messages.ts";

/** Tasks sent in one message, numbered from `from`, until each is settled. */
export interface Sent {
  from: number;
  /**
   * The message's id, `b<from>` (a publish tried again is a repeat, which
   * the server drops), or `b<from>.<n>` for a task sent again (`retry`),
   * which is no repeat of its first send.
   */
  msgID: string;
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
  /** The host workers a task may cost (the stage's crashBudget), and those each task that lost one has cost. */
  readonly #budget: number;
  readonly #costs = new Map<number, number>();
  readonly #decoder = new Decoder();
  /** Sent batches with tasks not settled, by their first task's number. */
  readonly #sent = new Map<number, Sent>();
  /** Tasks sent again (`retry`), not settled, by their number. */
  readonly #again = new Map<number, Sent>();
  /** One past the last task number sent: a task below it is sent again; and how many were. */
  #sentTo = 0;
  #sentAgain = 0;
  /** Answers and refusals dropped because they did not echo their batch's token (forged), and when that was last reported. */
  #forged = 0;
  #forgedReported = 0;
  /** The hosts whose answers settled tasks so far, and who hears of each new one (the dashboard shows them). */
  readonly #hosts = new Set<string>();
  readonly #onHosts: (hosts: string[]) => void;

  constructor(
    stage: string,
    outSubject: string,
    budget: number,
    onHosts: (hosts: string[]) => void,
  ) {
    this.#stage = stage;
    this.#outSubject = outSubject;
    this.#budget = budget;
    this.#onHosts = onHosts;
  }

  /** How many sent batches have tasks not settled. */
  get size(): number {
    return this.#sent.size + this.#again.size;
  }

  /**
   * A batch of `count` tasks numbered from `from` was sent with `token`;
   * returns it. A task sent before is sent again (`retry`): an earlier
   * send that has not settled it never will.
   */
  add(from: number, count: number, token: Uint8Array): Sent {
    const again = from < this.#sentTo;
    const sent = {
      from,
      msgID: again ? `b${from}.${++this.#sentAgain}` : `b${from}`,
      token,
      settled: new Uint8Array(count),
      left: count,
      seq: 0,
    };
    if (!again) {
      this.#sentTo = from + count;
      this.#sent.set(from, sent);
      return sent;
    }
    const before = this.#again.get(from) ?? this.#sentWith(from);
    if (before !== undefined) this.#settle(before, from - before.from);
    this.#again.set(from, sent);
    return sent;
  }

  /** The stream sequence numbers of the stored batches with tasks not settled. */
  storedSeqs(): number[] {
    const seqs = [];
    for (const sent of [...this.#sent.values(), ...this.#again.values()]) {
      if (sent.seq > 0) seqs.push(sent.seq);
    }
    return seqs;
  }

  /** Rejects every task not settled with `failure` (a host refused the stage), and forgets them. */
  rejectAll(settler: TaskSettler, failure: RemoteFailure): void {
    for (const sent of [...this.#sent.values(), ...this.#again.values()]) {
      for (let i = 0; i < sent.settled.length; i++) {
        if (sent.settled[i] !== 1) {
          settler.reject(sent.from + i, failure, "final");
        }
      }
    }
    this.#sent.clear();
    this.#again.clear();
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
      // A refusal answers a batch it was delivered (a task sent again, or not).
      const owners = [batch ?? this.#sentWith(from), this.#again.get(from)]
        .filter((owner) => owner !== undefined);
      if (owners.length === 0) return null;
      if (!owners.some((owner) => sameToken(bytes, TOKEN_AT, owner.token))) {
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
        let owner = batch !== undefined && i < batch.settled.length
          ? batch
          : this.#sentWith(task);
        // A task sent again counts only the answer to its last send.
        let stale = false;
        if (
          this.#again.size > 0 &&
          (owner === undefined || owner.settled[task - owner.from] === 1)
        ) {
          const again = this.#again.get(task);
          if (again !== undefined) {
            stale = !sameToken(bytes, TOKEN_AT, again.token);
            owner = again;
          }
        }
        if (owner !== undefined && owner !== checked && !stale) {
          checked = owner;
          genuine = sameToken(bytes, TOKEN_AT, owner.token);
          if (!genuine) forged = true;
        }
        const index = owner === undefined ? 0 : task - owner.from;
        if (
          owner === undefined || stale || !genuine ||
          owner.settled[index] === 1
        ) {
          for (let j = 0; j < n; j++) reader.frame();
          continue;
        }
        this.#settle(owner, index);
        settled = true;
        // A result (NONE, ONE or MANY): what the task cost is forgotten.
        if (tag <= MANY && this.#costs.size > 0) this.#costs.delete(task);
        if (tag === ONE) settler.resolve(task, reader.recordBytes());
        else if (tag === NONE) settler.resolve(task, null);
        else if (tag === MANY) {
          const records: Uint8Array[] = [];
          for (let j = 0; j < n; j++) records.push(reader.recordBytes());
          settler.resolveMany(task, records);
        } else {
          const failure: RemoteFailure = {
            mpipeRemote: {
              host,
              worker: worker < 0 ? undefined : worker,
              what: undefined,
            },
            error: reader.record(this.#decoder),
          };
          const rejection = tag === QUARANTINED
            ? "quarantined"
            : tag === WORKER_LOST
            ? this.#charge(task, failure)
            : "retry";
          settler.reject(task, failure, rejection);
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

  /**
   * Charges task `task` the host worker it cost (`failure`): quarantined
   * once it has cost the stage's crashBudget (it says so), else tried again.
   */
  #charge(task: number, failure: RemoteFailure): Rejection {
    const cost = (this.#costs.get(task) ?? 0) + 1;
    if (cost < this.#budget) {
      this.#costs.set(task, cost);
      return "retry";
    }
    this.#costs.delete(task);
    failure.mpipeRemote.what =
      `the task was quarantined: it has cost the stage ${cost} host workers (its crashBudget is ${this.#budget}), and is not sent again`;
    return "quarantined";
  }

  /** Task `index` of batch `sent` is settled: forgotten with the batch's last. */
  #settle(sent: Sent, index: number): void {
    if (sent.settled[index] === 1) return;
    sent.settled[index] = 1;
    if (--sent.left > 0) return;
    if (this.#sent.get(sent.from) === sent) this.#sent.delete(sent.from);
    else if (this.#again.get(sent.from) === sent) {
      this.#again.delete(sent.from);
    }
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
