/**
 * The stages a worker host knows: it watches the stream of stage
 * announcements, serves each new stage it may run (a `StageServer`) or
 * refuses it (see `trust.ts`), and stops serving a stage not announced
 * again for `ANNOUNCE_TTL_MS` (its coordinator is gone).
 *
 * @module
 */

import {
  ANNOUNCE_TTL_MS,
  readAnnouncement,
  type StageSpec,
} from "../announcements.ts";
import {
  delay,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
} from "../connection.ts";
import { Decoder } from "../messages.ts";
import {
  ensureStagesStream,
  stageNames,
  STAGES_STREAM,
  STAGES_SUBJECTS,
} from "../streams.ts";
import type { HostSettings } from "./host_options.ts";
import { type HostPort, StageServer } from "./stage_server.ts";
import { ignoredBecause, refusal } from "./trust.ts";

/** A host's watch of the stage announcements, and the stages it knows. */
export class StageWatch {
  /** The host's name, as errors give it. */
  readonly #host: string;
  readonly #options: HostSettings;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #port: HostPort;
  readonly #decoder = new Decoder();
  /** The stages seen, by `<run>/<index>`: served, or refused (see `StageServer.refusal`). */
  readonly #stages = new Map<string, StageServer>();
  #stopped = false;
  /** The watch loop, until `stop()`. */
  readonly watching: Promise<void>;
  /** The timer of `#expire`. */
  readonly #expiry: ReturnType<typeof setInterval>;

  constructor(
    host: string,
    options: HostSettings,
    js: JetStreamClient,
    jsm: JetStreamManager,
    port: HostPort,
  ) {
    this.#host = host;
    this.#options = options;
    this.#js = js;
    this.#jsm = jsm;
    this.#port = port;
    this.watching = this.#watch();
    this.#expiry = setInterval(() => this.#expire(), 1_000);
  }

  /** How many stages the host serves now. */
  get serving(): number {
    let count = 0;
    for (const server of this.#stages.values()) {
      if (server.live && server.refusal === null) count++;
    }
    return count;
  }

  /** How many stage announcements the host ignored: unsigned or forged (with `trust`), replayed, or malformed. */
  get ignored(): number {
    return this.#ignored;
  }

  /** Stops watching, and serving every stage. */
  stop(): void {
    this.#stopped = true;
    clearInterval(this.#expiry);
    this.#stopWatching();
    for (const server of this.#stages.values()) server.stop();
  }

  /** Forgets `server`'s stage: its run has ended (its announcement was withdrawn first). */
  forget(server: StageServer): void {
    if (this.#stages.get(server.stage.key) === server) {
      this.#stages.delete(server.stage.key);
    }
  }

  /** Watches the stage announcements, and serves or refuses each new stage. */
  async #watch(): Promise<void> {
    while (!this.#stopped) {
      try {
        const consumer = await this.#js.consumers.get(STAGES_STREAM, {
          filter_subjects: STAGES_SUBJECTS,
          deliver_policy: DeliverPolicy.LastPerSubject,
        });
        const messages = await consumer.consume();
        this.#stopWatching = () => messages.stop();
        // stop() may have come while the consumer was being made.
        if (this.#stopped) messages.stop();
        for await (const message of messages) {
          if (this.#stopped) break;
          await this.#announced(message.subject, message.data);
        }
      } catch {
        // Reconnecting, or the server restarted (maybe without its store:
        // then make the stream of announcements again) : watch again.
        await ensureStagesStream(this.#jsm).catch(() => {});
      }
      if (!this.#stopped) await delay(250);
    }
  }

  #stopWatching: () => void = () => {};

  /** A stage was announced (again): serve it, or refuse it, or ignore the announcement (see `ignoredBecause`). */
  async #announced(subject: string, bytes: Uint8Array): Promise<void> {
    const read = await readAnnouncement(
      this.#decoder,
      bytes,
      this.#options.trust,
    );
    const why = ignoredBecause(read, subject, this.#options.trust);
    if (why !== null) return this.#ignore(subject, why);
    const spec = read!.spec;
    const key = `${spec.run}/${spec.index}`;
    const known = this.#stages.get(key);
    if (known !== undefined) {
      known.seen = performance.now();
      return;
    }
    // The names are the run's own, whatever else the spec says.
    const names = stageNames(spec.run, spec.index);
    const target = spec.target;
    const checked: StageSpec = {
      ...spec,
      stream: names.stream,
      inSubject: names.inSubject,
      outSubject: names.outSubject,
      aloneSubject: names.aloneSubject,
      // A module is imported by the URL that was checked, normalized.
      target: target.kind === "module" && URL.canParse(target.specifier)
        ? { ...target, specifier: new URL(target.specifier).href }
        : target,
    };
    const server = new StageServer(
      this.#port,
      checked,
      {
        key,
        name: checked.name,
        target: checked.target,
        args: checked.args,
        concurrency: checked.concurrency,
        host: this.#host,
      },
      this.#options.workers,
      refusal(checked, read!.signed, this.#options),
    );
    this.#stages.set(key, server);
    server.serve();
  }

  /** Announcements ignored (see `#announced`), and when they were last reported. */
  #ignored = 0;
  #ignoredReported = 0;

  /** Counts an ignored announcement, and reports the count on stderr at most every 10 s. */
  #ignore(subject: string, why: string): void {
    this.#ignored++;
    const now = performance.now();
    if (this.#ignoredReported !== 0 && now - this.#ignoredReported < 10_000) {
      return;
    }
    this.#ignoredReported = now;
    console.warn(
      `mpipe host ${this.#host}: ignored ${this.#ignored} stage announcement(s) so far; the last, on ${subject}, because ${why}`,
    );
  }

  /** Stops serving the stages not announced again for `ANNOUNCE_TTL_MS`: their coordinators are gone. */
  #expire(): void {
    const now = performance.now();
    for (const [key, server] of this.#stages) {
      if (now - server.seen > ANNOUNCE_TTL_MS) {
        server.stop();
        this.#stages.delete(key);
      }
    }
  }
}
