/**
 * What a remote stage's bridge hears from its hosts: each host that serves
 * the stage says so every `HOST_BEAT_MS`, listing the batches it holds (by
 * their ack subjects), and lists each batch it is given as soon as it has
 * it (see host/stage_server.ts). A host not heard from for
 * `HOST_SILENT_MS` is taken as lost (killed, stopped, cut off): its batches
 * are NAKed, so that the server gives them to other hosts at once, not
 * after `ackWait` (which stays the backstop, for a batch a host was given
 * just before it died and had no time to list).
 *
 * A NAK of a batch that was acked since, or given to another host, is
 * ignored by the server. Anyone who may publish on a stage's hosts subject
 * can make it NAK a batch whose ack subject it knows, as anyone who may
 * publish on `$JS.ACK.>` can: at worst a task runs again, and its result
 * still reaches the reader once.
 *
 * @module
 */

import { HOST_SILENT_MS } from "../streams.ts";

/** The hosts of one stage, as their beats tell. */
export class HostBeats {
  /** By the id in their beats: when last heard (performance.now()), and the batches they hold. */
  readonly #hosts = new Map<string, { seen: number; held: Set<string> }>();
  /** What a batch's ack subject of this stage holds: `.<stream>.hosts.`. */
  readonly #consumer: string;
  readonly #nak: (subject: string) => void;
  /** When `check()` last ran (performance.now()). */
  #checked = performance.now();

  constructor(stream: string, nak: (subject: string) => void) {
    this.#consumer = `.${stream}.hosts.`;
    this.#nak = nak;
  }

  /** A beat: `<id> all|new`, then one ack subject a line. */
  heard(text: string): void {
    const lines = text.split("\n");
    const [id, kind] = lines[0]!.split(" ");
    if (id === undefined || id === "") return;
    let host = this.#hosts.get(id);
    if (host === undefined) {
      host = { seen: 0, held: new Set() };
      this.#hosts.set(id, host);
    }
    host.seen = performance.now();
    if (kind === "all") host.held.clear();
    for (let i = 1; i < lines.length; i++) {
      const subject = lines[i]!;
      // Only a batch of this stage: never a NAK on any other subject.
      if (
        subject.startsWith("$JS.ACK.") && subject.includes(this.#consumer) &&
        !/[\s*>]/.test(subject)
      ) host.held.add(subject);
    }
  }

  /** The stream sequence numbers of the batches the hosts heard from hold. */
  heldSeqs(): Set<number> {
    const seqs = new Set<number>();
    for (const host of this.#hosts.values()) {
      for (const subject of host.held) seqs.add(this.#seqOf(subject));
    }
    return seqs;
  }

  /** A batch's stream sequence number, from its ack subject (`…<stream>.hosts.<deliveries>.<seq>.…`). */
  #seqOf(subject: string): number {
    const at = subject.indexOf(this.#consumer) + this.#consumer.length;
    return Number(subject.slice(at).split(".")[1]);
  }

  /**
   * NAKs the batches of each host silent for HOST_SILENT_MS, and forgets
   * it (called every half second or so). Returns the stream sequence
   * numbers NAKed (maybe none), or null if no host fell silent.
   */
  check(): Set<number> | null {
    let naked: Set<number> | null = null;
    const now = performance.now();
    const since = now - this.#checked;
    this.#checked = now;
    if (since > HOST_SILENT_MS / 2) {
      // This thread was held up (its output full, or the machine busy):
      // the beats it has not read yet are no silence of the hosts.
      for (const host of this.#hosts.values()) host.seen = now;
      return null;
    }
    for (const [id, host] of this.#hosts) {
      if (now - host.seen < HOST_SILENT_MS) continue;
      this.#hosts.delete(id);
      // A host that held nothing may have been given batches just before
      // it died: the bridge looks for them too.
      naked ??= new Set();
      if (host.held.size === 0) continue;
      for (const subject of host.held) {
        naked.add(this.#seqOf(subject));
        this.#nak(subject);
      }
    }
    return naked;
  }
}
