/**
 * The stages a worker host knows: it watches the stream of stage
 * announcements, serves each new stage it may run (a `StageServer`) or
 * refuses it (see `trust.ts`), and stops serving a stage not announced
 * again for `ANNOUNCE_TTL_MS` (its coordinator is gone).
 *
 * It also removes what a coordinator that is gone left on the server: a
 * run's stream (with its consumers) whose stage has had no announcement on
 * the server for `ORPHAN_GRACE_MS`. An announcement lives `ANNOUNCE_TTL_MS`
 * after its coordinator last made it (the stream's `max_age`), and a live
 * coordinator makes it every `ANNOUNCE_EVERY_MS`, so a stream without one
 * is a dead coordinator's (or a coordinator's cut off from the server for
 * that long: its run then fails, as on a lost stream). The grace covers a
 * stream made just before its first announcement, and an announcement
 * stream made again after a server lost its store.
 *
 * @module
 */

import {
  ANNOUNCE_EVERY_MS,
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
  /** The timer of `#expire`, and of `#sweep`. */
  readonly #expiry: ReturnType<typeof setInterval>;
  readonly #sweeper: ReturnType<typeof setInterval>;
  /** Run streams seen without an announcement, since when (performance.now()). */
  readonly #orphans = new Map<string, number>();
  #sweeping = false;

  /** How long a run's stream may lack an announcement before a host removes it. */
  static readonly ORPHAN_GRACE_MS = 3 * ANNOUNCE_EVERY_MS;

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
    this.#sweeper = setInterval(() => this.#sweep(), ANNOUNCE_EVERY_MS / 2);
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
    clearInterval(this.#sweeper);
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

  /**
   * Removes the run streams whose stage has had no announcement on the
   * server for `ORPHAN_GRACE_MS` (see the module's comment). In doubt (a
   * request that fails), it removes nothing.
   */
  async #sweep(): Promise<void> {
    if (this.#sweeping) return;
    this.#sweeping = true;
    try {
      const now = performance.now();
      const seen = new Set<string>();
      for await (const stream of this.#jsm.streams.names()) {
        const run = /^MPIPE_([A-Za-z0-9]+)_(\d+)$/.exec(stream);
        if (run === null || this.#stopped) continue;
        seen.add(stream);
        const { announcement } = stageNames(run[1]!, Number(run[2]));
        const announced = await this.#jsm.streams.getMessage(STAGES_STREAM, {
          last_by_subj: announcement,
        });
        if (announced !== null) {
          this.#orphans.delete(stream);
          continue;
        }
        const since = this.#orphans.get(stream) ?? now;
        this.#orphans.set(stream, since);
        if (now - since >= StageWatch.ORPHAN_GRACE_MS) {
          // Another host may have removed it first.
          await this.#jsm.streams.delete(stream).catch(() => {});
          this.#orphans.delete(stream);
        }
      }
      for (const stream of this.#orphans.keys()) {
        if (!seen.has(stream)) this.#orphans.delete(stream);
      }
    } catch {
      // Disconnected, or no MPIPE_STAGES yet: nothing is removed in doubt.
    } finally {
      this.#sweeping = false;
    }
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
