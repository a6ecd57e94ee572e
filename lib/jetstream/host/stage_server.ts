/**
 * A stage a worker host serves: it pulls the stage's batches while it has
 * room for them, hands each to its host, and says the batches in hand are
 * alive.
 *
 * It pulls with `fetch()` sized to its free room, never more, so every
 * batch the server delivered to it is one it has seen at once: it says
 * `working()` for each, and lists each in its beats (see `beatText`), by which
 * the stage's bridge gives a silent host's batches to other hosts within
 * seconds (see coordinator/host_beats.ts).
 *
 * @module
 */

import {
  type Consumer,
  delay,
  type JetStreamClient,
  type JsMsg,
  replyOf,
} from "../connection.ts";
import type { StageSpec } from "../announcements.ts";
import { HOST_BEAT_MS, HOST_SILENT_MS, stageNames } from "../streams.ts";
import type { HostStage } from "./host_worker.ts";

/** What a stage server uses of its host. */
export interface HostPort {
  js(): JetStreamClient;
  /** Takes a batch into the host's local pipeline (awaits room there). */
  take(server: StageServer, message: JsMsg): Promise<void>;
  /** Whether a failed request failed because the stream is gone. */
  gone(stream: string, error: unknown): Promise<boolean>;
  /** The batches the server holds, to say they are being worked on. */
  heldBy(server: StageServer): JsMsg[];
  /** The server's stage is gone: its run has ended. */
  ended(server: StageServer): void;
  /** Publishes a core NATS message on `subject` (a sign of life). */
  beat(subject: string, payload: string): void;
}

/**
 * What a host's beat says, in its first line after the host's id: `all`
 * (the batches it holds of the stage, each by its ack subject, one a line)
 * or `new` (batches it has just been given).
 */
type BeatKind = "all" | "new";

/** A beat's text: `<id> <kind>`, then one ack subject a line. */
function beatText(id: string, kind: BeatKind, subjects: string[]): string {
  return subjects.length === 0
    ? `${id} ${kind}`
    : `${id} ${kind}\n${subjects.join("\n")}`;
}

/**
 * A stage the host serves: pulls its batches while it has room for them.
 *
 * Room is counted in batches in hand (delivered, not yet acked): enough to
 * keep the host's workers fed for about 20 ms of batches (as timed so
 * far), and at least two per worker. So a host of fast batches keeps many
 * in hand, and a host of slow ones no more than its workers can soon
 * start, leaving the rest to other hosts.
 */
export class StageServer {
  readonly spec: StageSpec;
  readonly stage: HostStage;
  /** Why the host refuses the stage (it answers its first batch so), or null. */
  readonly refusal: string | null;
  /** When the stage was last announced (performance.now()). */
  seen = performance.now();
  readonly #host: HostPort;
  readonly #workers: number;
  /** This server's id in its beats (a host may serve a stage again, anew). */
  readonly #id = crypto.randomUUID();
  /** Batches held by the host (taken, not yet acked). */
  #held = 0;
  /** Batches delivered and not yet taken (or being taken) by the host. */
  readonly #queued = new Set<JsMsg>();
  /** Batches asked for by the pulls under way and not yet delivered. */
  #asked = 0;
  #pulls = 0;
  /** The ack subjects of batches delivered since the last beat. */
  #fresh: string[] = [];
  /** The takes, one after another, in delivery order. */
  #takes: Promise<void> = Promise.resolve();
  /** The error of a pull, for the loop of `serve()` to handle. */
  #pullError: { error: unknown } | null = null;
  /** Pulls that failed (or came back empty at once) in a row. */
  #failures = 0;
  /** Milliseconds a batch took from its take to its ack, on average lately. */
  #batchMs = 0;
  #change: { promise: Promise<void>; resolve: () => void } | null = null;
  #stopped = false;
  readonly #stopPulls = new Set<() => void>();
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  #beat: ReturnType<typeof setInterval> | undefined;

  constructor(
    host: HostPort,
    spec: StageSpec,
    stage: HostStage,
    workers: number,
    refusal: string | null,
  ) {
    this.#host = host;
    this.spec = spec;
    this.stage = stage;
    this.#workers = workers;
    this.refusal = refusal;
  }

  /** Whether it still serves the stage. */
  get live(): boolean {
    return !this.#stopped;
  }

  /** How many batches it may have in hand now. */
  get #limit(): number {
    const least = 2 * this.#workers + 2;
    if (this.#batchMs === 0) return least;
    return Math.max(
      least,
      Math.min(256, Math.ceil((this.#workers * 20) / this.#batchMs)),
    );
  }

  /** A batch was taken. */
  hold(): void {
    this.#held++;
  }

  /** A batch taken `since` (performance.now()) was acked, answered or given back. */
  release(since: number): void {
    this.#held--;
    const ms = performance.now() - since;
    this.#batchMs = this.#batchMs === 0 ? ms : 0.9 * this.#batchMs + 0.1 * ms;
    this.#changed();
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#heartbeat);
    clearInterval(this.#beat);
    for (const stop of this.#stopPulls) stop();
    this.#changed();
  }

  /** Wakes the loop of `serve()`: room, a pull ended, or the stop. */
  #changed(): void {
    const change = this.#change;
    this.#change = null;
    change?.resolve();
  }

  /** The batches in hand: delivered and not yet acked or given back. */
  #inHand(): JsMsg[] {
    return [...this.#queued, ...this.#host.heldBy(this)];
  }

  /**
   * Pulls batches, while it has room for them, until the stage's stream is
   * gone (its run ended) or the host closes.
   */
  async serve(): Promise<void> {
    const host = this.#host;
    // Batches in hand are alive: say so before their ackWait runs out.
    this.#heartbeat = setInterval(() => {
      for (const message of new Set(this.#inHand())) message.working();
    }, Math.max(100, this.spec.ackWait / 3));
    // The stage has a host, holding these batches: its bridge fails the
    // stage once it hears from none for its hostTimeout, and gives the
    // batches of a host it no longer hears from to others. A host that
    // refuses the stage says nothing.
    const subject = stageNames(this.spec.run, this.spec.index).hostsSubject;
    const beat = () =>
      host.beat(
        subject,
        beatText(this.#id, "all", [...new Set(this.#inHand().map(replyOf))]),
      );
    if (this.refusal === null) {
      beat();
      this.#beat = setInterval(beat, HOST_BEAT_MS);
    }
    let consumer: Consumer | null = null;
    while (!this.#stopped) {
      const failed = this.#pullError;
      this.#pullError = null;
      try {
        if (failed !== null) throw failed.error;
        consumer ??= await host.js().consumers.get(this.spec.stream, "hosts");
        const limit = this.#limit;
        const free = limit - this.#held - this.#queued.size - this.#asked;
        // Few pulls at once: a new one once a quarter of the room is free.
        if (free <= 0 || (this.#pulls > 0 && free < Math.ceil(limit / 4))) {
          this.#change ??= Promise.withResolvers<void>();
          await this.#change.promise;
          continue;
        }
        this.#pull(consumer, free, subject);
      } catch (error) {
        consumer = null;
        if (await host.gone(this.spec.stream, error)) {
          host.ended(this);
          break;
        }
        await delay(Math.min(2_000, 50 * 2 ** this.#failures++));
      }
    }
    this.stop();
  }

  /** Pulls up to `count` batches, each taken by the host in turn. */
  async #pull(
    consumer: Consumer,
    count: number,
    subject: string,
  ): Promise<void> {
    this.#asked += count;
    this.#pulls++;
    let delivered = 0;
    const started = performance.now();
    try {
      const messages = await consumer.fetch({
        max_messages: count,
        // Shorter than HOST_SILENT_MS: a host that is stopped (its
        // connection open) has no pull left at the server by the time
        // its batches are NAKed, so they go to live hosts.
        expires: HOST_SILENT_MS - HOST_BEAT_MS,
      });
      const stop = () => messages.stop();
      this.#stopPulls.add(stop);
      if (this.#stopped) messages.stop();
      try {
        for await (const message of messages) {
          delivered++;
          this.#asked--;
          this.#took(message, subject);
        }
      } finally {
        this.#stopPulls.delete(stop);
      }
    } catch (error) {
      this.#pullError ??= { error };
    } finally {
      if (delivered > 0) this.#failures = 0;
      else if (performance.now() - started < 1_000 && !this.#stopped) {
        // Back at once with nothing (the consumer is gone?): see why.
        this.#pullError ??= { error: undefined };
      }
      this.#asked -= count - delivered;
      this.#pulls--;
      this.#changed();
    }
  }

  /** A batch was delivered: listed in the next beat at once, and taken after those before it. */
  #took(message: JsMsg, subject: string): void {
    this.#queued.add(message);
    if (this.refusal === null) {
      if (this.#fresh.length === 0) {
        queueMicrotask(() => {
          const fresh = this.#fresh;
          this.#fresh = [];
          this.#host.beat(subject, beatText(this.#id, "new", fresh));
        });
      }
      this.#fresh.push(replyOf(message));
    }
    this.#takes = this.#takes.then(async () => {
      if (this.#stopped) message.nak();
      else await this.#host.take(this, message);
    }).catch(() => {}).finally(() => {
      this.#queued.delete(message);
      this.#changed();
    });
  }
}
