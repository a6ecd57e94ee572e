/**
 * What a worker host publishes to a stage's subjects besides its answers'
 * parts: a batch's failure, a refusal of the stage, a batch split into
 * single tasks; and how it publishes through reconnections.
 *
 * @module
 */

import {
  apiCode,
  delay,
  headers,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  permanent,
} from "../connection.ts";
import {
  Encoder,
  FAILED,
  failedAnswer,
  type FailureTag,
  LOST,
  QUARANTINED,
  readBatch,
  refusalMessage,
  singlesOf,
} from "../messages.ts";
import type { StageServer } from "./stage_server.ts";

/** A host's publishes to the stages it serves. */
export class Replies {
  /** The host's name, as its answers give it. */
  readonly #host: string;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #encoder = new Encoder();

  constructor(host: string, js: JetStreamClient, jsm: JetStreamManager) {
    this.#host = host;
    this.#js = js;
    this.#jsm = jsm;
  }

  /**
   * Publishes to a stage's output until the server has stored it, through
   * reconnections; rejects once the stage's stream is gone, or at once on
   * a permanent error (see `permanent`).
   */
  async publish(
    server: StageServer,
    bytes: Uint8Array,
    msgID: string,
  ): Promise<void> {
    for (let attempt = 0;; attempt++) {
      try {
        await this.#js.publish(server.spec.outSubject, bytes, {
          msgID,
          timeout: 5_000,
        });
        return;
      } catch (error) {
        if (permanent(error)) throw error;
        if (await this.gone(server.spec.stream, error)) throw error;
      }
      await delay(Math.min(2_000, 25 * 2 ** attempt));
    }
  }

  /** Whether a failed request failed because the stream no longer exists. */
  async gone(stream: string, error: unknown): Promise<boolean> {
    if (apiCode(error) === 10059) return true;
    try {
      await this.#jsm.streams.info(stream);
      return false;
    } catch (info) {
      return apiCode(info) === 10059;
    }
  }

  /**
   * Refuses a stage in answer to a batch of it (so that the refusal echoes
   * the batch's token, as only a host it was delivered to can), then acks
   * the batch and stops serving the stage: the refusal fails its pipeline.
   */
  async refuse(server: StageServer, message: JsMsg): Promise<void> {
    server.stop();
    try {
      await this.publish(
        server,
        refusalMessage(
          this.#encoder,
          message.data,
          this.#host,
          server.refusal!,
        ),
        `r${this.#host}`,
      );
      message.ack();
    } catch { /* The stage is gone. */ }
  }

  /** Puts each task of a batch back as a message of its own (with the batch's token), then acks the batch. */
  async split(server: StageServer, message: JsMsg): Promise<void> {
    const { from } = readBatch(message.data);
    const singles = singlesOf(message.data);
    try {
      // Each single is a suspect from its first delivery (see
      // WorkerHost's #isolate).
      const lost = headers();
      lost.set(LOST, "1");
      await Promise.all(singles.map((single, i) =>
        this.#js.publish(
          server.spec.inSubject,
          single,
          // A batch split twice (by two hosts) gives each task once.
          { msgID: `t${from + i}`, timeout: 5_000, headers: lost },
        )
      ));
      message.ack();
    } catch {
      message.nak(1_000);
    }
  }

  /** Answers a single task, quarantined, with `error` (no retry sends it again), then acks it. */
  quarantine(
    server: StageServer,
    message: JsMsg,
    task: number,
    error: Error,
  ): Promise<void> {
    return this.fail(server, message, task, error, undefined, QUARANTINED);
  }

  /** Answers every task of a batch with `error` (as `tag` says, see `FailureTag`), then acks it. */
  async fail(
    server: StageServer,
    message: JsMsg,
    from: number,
    error: unknown,
    worker: number | undefined,
    tag: FailureTag = FAILED,
  ): Promise<void> {
    const { count, token } = readBatch(message.data);
    const answer = failedAnswer(
      this.#encoder,
      from,
      count,
      token,
      this.#host,
      worker ?? -1,
      error,
      tag,
    );
    try {
      await this.publish(server, answer, `f${message.info.streamSequence}`);
      message.ack();
    } catch { /* The stage is gone. */ }
  }
}
