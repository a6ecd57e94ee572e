/**
 * A stage a worker host serves: it pulls the stage's batches from the
 * consumer `hosts` while it has room for them, hands each to its host, and
 * says the batches in hand are alive.
 *
 * @module
 */

import { delay, type JetStreamClient, type JsMsg } from "../connection.ts";
import type { StageSpec } from "../announcements.ts";
import { HOST_BEAT_MS, stageNames } from "../streams.ts";
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
  /** Publishes an empty core NATS message on `subject` (a sign of life). */
  beat(subject: string): void;
}

/**
 * A stage the host serves: pulls its batches while it has room for them.
 *
 * Room is counted in batches held (taken, not yet acked): enough to keep
 * the host's workers fed for about 20 ms of batches (as timed so far), and
 * at least two per worker. So a host of fast batches keeps many in hand,
 * and a host of slow ones no more than its workers can soon start, leaving
 * the rest to other hosts.
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
  /** Batches held (taken, not yet acked). */
  #held = 0;
  /** Milliseconds a batch took from its take to its ack, on average lately. */
  #batchMs = 0;
  #room: { promise: Promise<void>; resolve: () => void } | null = null;
  #stopped = false;
  #stopPulling: () => void = () => {};
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

  /** How many batches it may hold now. */
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
    const room = this.#room;
    this.#room = null;
    room?.resolve();
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#heartbeat);
    clearInterval(this.#beat);
    this.#stopPulling();
    const room = this.#room;
    this.#room = null;
    room?.resolve();
  }

  /**
   * Pulls batches, while it has room for them, until the stage's stream is
   * gone (its run ended) or the host closes. The client asks for the next
   * batches only as this loop takes the previous ones (`consume()` queues
   * its pull requests with the messages), so a paused loop pulls no more.
   */
  async serve(): Promise<void> {
    const host = this.#host;
    // Batches in hand are alive: say so before their ackWait runs out.
    this.#heartbeat = setInterval(() => {
      for (const message of host.heldBy(this)) message.working();
    }, Math.max(100, this.spec.ackWait / 3));
    // The stage has a host: its bridge fails the stage once it hears from
    // none for its hostTimeout. A host that refuses the stage says nothing.
    if (this.refusal === null) {
      const subject = stageNames(this.spec.run, this.spec.index).hostsSubject;
      host.beat(subject);
      this.#beat = setInterval(() => host.beat(subject), HOST_BEAT_MS);
    }
    for (let attempt = 0; !this.#stopped; attempt++) {
      try {
        const consumer = await host.js().consumers.get(
          this.spec.stream,
          "hosts",
        );
        const messages = await consumer.consume({
          max_messages: Math.max(4, 2 * this.#workers),
          abort_on_missing_resource: true,
        });
        this.#stopPulling = () => messages.stop();
        // stop() may have come while the consumer was being made.
        if (this.#stopped) messages.stop();
        for await (const message of messages) {
          attempt = 0;
          if (this.#stopped) {
            message.nak();
            continue;
          }
          await host.take(this, message);
          while (this.#held >= this.#limit && !this.#stopped) {
            this.#room ??= Promise.withResolvers<void>();
            await this.#room.promise;
          }
        }
        if (this.#stopped) break;
        if (await host.gone(this.spec.stream, undefined)) {
          host.ended(this);
          break;
        }
      } catch (error) {
        if (await host.gone(this.spec.stream, error)) {
          host.ended(this);
          break;
        }
      }
      await delay(Math.min(2_000, 50 * 2 ** attempt));
    }
    this.stop();
  }
}
