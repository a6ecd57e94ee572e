/**
 * The coordinator's side of a JetStream cluster: `JetStreamCluster`, the
 * `cluster` option of stages that run on worker hosts.
 *
 * It opens a run per pipeline, names each remote stage's stand-in worker
 * (`bridge.ts`, which makes the stage's stream and consumers and announces
 * the stage to the hosts), and removes the run's streams when its pipeline
 * is done.
 *
 * @module
 */

import type { Cluster, ClusterRun, RemoteStage } from "../../stage/cluster.ts";
import type { BridgeConfig } from "./bridge.ts";
import { checkOptionNames } from "../../checks.ts";
import {
  apiCode,
  checkConnectionOptions,
  CONNECTION_OPTION_NAMES,
  type ConnectionOptions,
  connectNats,
  type JetStreamManager,
  jetstreamManager,
  type NatsConnection,
} from "../connection.ts";
import { PROTOCOL, type StageSpec } from "../announcements.ts";
import { generateKeys, importSigningKey } from "../keys.ts";
import { ensureStagesStream, stageNames, STAGES_STREAM } from "../streams.ts";

/**
 * The options of `JetStreamCluster.connect`: the connection, and how remote
 * stages behave.
 *
 * @example A short ackWait, for hosts that may be lost
 * ```ts ignore
 * import {
 *   JetStreamCluster,
 *   type JetStreamClusterOptions,
 * } from "@mpipe/mpipe/jetstream";
 *
 * const options: JetStreamClusterOptions = {
 *   servers: ["127.0.0.1:4222"],
 *   name: "nightly-scoring",
 *   ackWait: 5_000,
 *   maxAttempts: 2,
 *   signingKey: Deno.env.get("MPIPE_SIGNING_KEY"),
 * };
 * await using cluster = await JetStreamCluster.connect(options);
 * ```
 */
export interface JetStreamClusterOptions extends ConnectionOptions {
  /**
   * Milliseconds a host may hold a batch of tasks without a sign of life
   * before JetStream itself gives it to another host (a host that runs a
   * batch says it is alive every third of this). The backstop: a host
   * killed mid-run loses its batches to other hosts within about 4 s
   * whatever this is (the stage's bridge hears each host every second,
   * with the batches it holds, and has those of a host silent for 3 s
   * delivered again at once).
   * @default {30000}
   */
  ackWait?: number;
  /**
   * How many hosts a task may lose (killed or crashed while it ran there)
   * before it fails with a `StageError` instead of being run again: the
   * `crashBudget` of this cluster's stages that set none. A task
   * whose host was lost runs again alone (nothing else runs on that host
   * meanwhile), so a task that kills hosts is found and fails after this
   * many host deaths in all, and the tasks that shared a host with it
   * succeed.
   * @default {3}
   */
  maxAttempts?: number;
  /**
   * The most tasks one message carries. By default a remote stage of size
   * `n` sends up to `ceil(n / 16)` tasks per message (at most 4096), so that
   * its tasks spread over 16 or more host workers. (A message also stays
   * under the server's `max_payload`, 1 MiB by default.)
   * @default {undefined: ceil(size / 16), at most 4096}
   */
  maxBatch?: number;
  /**
   * The coordinator's Ed25519 signing key, as `JetStreamCluster.generateKeys()`
   * (or `host.ts --new-keys`) makes it: every stage announcement is signed
   * with it, and hosts started with its public key (`--trust`) run only
   * stages signed so. Hosts run function and class targets only from signed
   * announcements. Keep it secret (an environment variable or a file only
   * the coordinator reads).
   * @default {undefined: announcements are unsigned, and hosts run only module targets under their --allow-target}
   */
  signingKey?: string;
  /**
   * Milliseconds a remote stage may have tasks waiting while no host
   * serves it (each host that serves a stage says so every second) before
   * the stage fails with a `StageError` ("no host"): its hosts were all
   * killed, stopped or cut off, or none was started, or none may run it.
   * `Infinity` waits for a host for ever (then `get({ timeout })` bounds a
   * wait for results).
   * @default {60000}
   */
  hostTimeout?: number;
}

/** The stand-in worker of every remote stage. */
const BRIDGE = new URL("./bridge.ts", import.meta.url).href;

/**
 * A NATS JetStream cluster whose worker hosts (`deno run
 * --allow-net=SERVER jsr:@mpipe/mpipe/host`) run the stages given it as
 * their `cluster` option. Connect once, use it in any number of pipelines, and close it at
 * the end (`await using`).
 *
 * - A stage with `{ cluster }` runs on the hosts; its size is how many of
 *   its tasks may run at once across them, and its order, backpressure,
 *   stop and errors are as for a local stage.
 * - Tasks travel in batches: the tasks a stage starts at once go in one
 *   message.
 * - A host that is lost loses nothing: its tasks go to other hosts after
 *   `ackWait`, and each result reaches the pipeline exactly once.
 * - A pipeline's streams and consumers are removed when it is done (or
 *   terminated), before its `done` settles.
 *
 * @example A remote stage between two local ones (needs a server and a host)
 * ```ts ignore
 * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import { JetStreamCluster } from "@mpipe/mpipe/jetstream";
 * import assert from "node:assert/strict";
 *
 * await using cluster = await JetStreamCluster.connect({
 *   servers: "127.0.0.1:4222",
 *   // Hosts run function targets only from a coordinator they trust.
 *   signingKey: Deno.env.get("MPIPE_SIGNING_KEY"),
 * });
 * const parse = new OrderedStage((line: string) => Number(line));
 * const square = new OrderedStage((x: number) => x * x, 16, { cluster });
 * const show = new OrderedStage((x: number) => `${x}`);
 * parse.link(square.link(show));
 * const pipe = new Pipeline<string, string>(parse);
 * for (const line of ["1", "2", "3"]) pipe.put(line);
 * pipe.put(null);
 * assert.deepEqual(await Array.fromAsync(pipe), ["1", "4", "9"]);
 * ```
 */
export class JetStreamCluster implements Cluster, AsyncDisposable {
  readonly #options: JetStreamClusterOptions;
  readonly #nc: NatsConnection;
  readonly #jsm: JetStreamManager;
  /** Runs not yet removed: each settles once its pipeline has closed it and its streams are gone. */
  readonly #open = new Set<Promise<void>>();
  #closed = false;

  private constructor(
    options: JetStreamClusterOptions,
    nc: NatsConnection,
    jsm: JetStreamManager,
  ) {
    this.#options = options;
    this.#nc = nc;
    this.#jsm = jsm;
  }

  /**
   * Connects to the cluster's NATS servers (with JetStream enabled).
   *
   * @param options The servers, credentials and TLS, and how remote stages behave.
   * @returns The connected cluster.
   * @throws {TypeError} If an option is of the wrong type.
   * @throws {RangeError} If `ackWait`, `maxAttempts` or `maxBatch` is out of range.
   *
   * @example Connect, and close at the end of the scope
   * ```ts ignore
   * import { JetStreamCluster } from "@mpipe/mpipe/jetstream";
   * import assert from "node:assert/strict";
   *
   * await using cluster = await JetStreamCluster.connect({
   *   servers: "127.0.0.1:4222",
   *   name: "my-coordinator",
   *   ackWait: 10_000,
   *   signingKey: Deno.env.get("MPIPE_SIGNING_KEY"),
   * });
   * assert.ok(cluster instanceof JetStreamCluster);
   * ```
   */
  static async connect(
    options: JetStreamClusterOptions,
  ): Promise<JetStreamCluster> {
    const checked = checkClusterOptions(options);
    if (checked.signingKey !== undefined) {
      await importSigningKey(
        checked.signingKey,
        "JetStreamCluster.connect: 'options.signingKey'",
      );
    }
    const nc = await connectNats(checked, "mpipe coordinator");
    try {
      const jsm = await jetstreamManager(nc);
      await ensureStagesStream(jsm);
      return new JetStreamCluster(checked, nc, jsm);
    } catch (error) {
      await nc.close();
      throw error;
    }
  }

  /**
   * Opens a run for the remote stages of one pipeline; the pipeline calls
   * it as it is built.
   *
   * @param stages The pipeline's stages on this cluster.
   * @returns The run: each stage's stand-in, and how to remove the run.
   * @throws {TypeError} If the cluster was closed.
   *
   * @example What a pipeline does with it (needs a server)
   * ```ts ignore
   * import { JetStreamCluster } from "@mpipe/mpipe/jetstream";
   * import assert from "node:assert/strict";
   *
   * await using cluster = await JetStreamCluster.connect({
   *   servers: "127.0.0.1:4222",
   * });
   * const run = cluster.openRun([{
   *   name: "square",
   *   target: { kind: "module", specifier: "https://example.com/square.ts", exportName: "default" },
   *   size: 4,
   *   concurrency: 1,
   *   args: [],
   * }]);
   * assert.match(run.standIn(0).module, /bridge\.ts$/);
   * await run.close();
   * ```
   */
  openRun(stages: readonly RemoteStage[]): ClusterRun {
    if (this.#closed) {
      throw new TypeError(
        "JetStreamCluster: the cluster was closed: connect again to run more pipelines",
      );
    }
    const run = crypto.randomUUID().replaceAll("-", "").slice(0, 16);
    const options = this.#options;
    const configs = stages.map((stage, index): BridgeConfig => {
      const names = stageNames(run, index);
      // One crash budget: the stage's own, else the cluster's.
      const maxAttempts = stage.crashBudget ?? options.maxAttempts ?? 3;
      const spec: StageSpec = {
        protocol: PROTOCOL,
        run,
        index,
        name: stage.name,
        stream: names.stream,
        inSubject: names.inSubject,
        outSubject: names.outSubject,
        aloneSubject: names.aloneSubject,
        target: stage.target,
        args: stage.args,
        concurrency: stage.concurrency,
        ackWait: options.ackWait ?? 30_000,
        maxAttempts,
        // A cap that tasks which only shared a host with a poison one never
        // reach, so that nothing is delivered for ever (see host/worker_host.ts).
        maxDeliver: 4 * maxAttempts + 4,
        taskTimeout: Number.isFinite(stage.taskTimeout ?? Infinity)
          ? stage.taskTimeout!
          : 0,
        // Set by the stage's bridge each time it announces the stage.
        issued: 0,
      };
      return {
        connection: connectionOf(options),
        spec,
        announcement: names.announcement,
        size: stage.size,
        maxBatch: options.maxBatch ??
          Math.min(4096, Math.ceil(stage.size / 16)),
        signingKey: options.signingKey ?? null,
        hostTimeout: options.hostTimeout ?? 60_000,
      };
    });
    let closed: Promise<void> | null = null;
    const removed = Promise.withResolvers<void>();
    this.#open.add(removed.promise);
    return {
      standIn: (index) => ({ module: BRIDGE, args: [configs[index]!] }),
      close: () => {
        closed ??= this.#removeRun(configs).finally(() => {
          this.#open.delete(removed.promise);
          removed.resolve();
        });
        return closed;
      },
    };
  }

  /**
   * Closes the connection. It first waits, up to `CLOSE_WAIT_MS` (10 s), for
   * the pipelines on the cluster to be done and their streams removed: a
   * program that read all its results and then leaves the scope of
   * `await using cluster` may close it while its pipelines are still
   * ending. A pipeline still running after that goes on (its stand-ins have
   * connections of their own) and removes its streams when it is done.
   *
   * @returns A Promise that settles once the connection is closed.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.allSettled([...this.#open]),
      new Promise((resolve) => {
        timer = setTimeout(resolve, JetStreamCluster.CLOSE_WAIT_MS);
      }),
    ]);
    clearTimeout(timer);
    await this.#nc.close();
  }

  /** How long `close()` waits for the pipelines on the cluster to be done. */
  static readonly CLOSE_WAIT_MS = 10_000;

  /**
   * Makes a new Ed25519 key pair for signing stage announcements: give
   * `signingKey` to the coordinators (the `signingKey` option; keep it
   * secret) and `publicKey` to the hosts (`--trust`, or the `trust`
   * option). `deno run jsr:@mpipe/mpipe/host --new-keys` prints one.
   *
   * @returns The two keys, as text (base64url).
   *
   * @example Make a key pair, and check that a coordinator takes it
   * ```ts
   * import { JetStreamCluster } from "@mpipe/mpipe/jetstream";
   * import assert from "node:assert/strict";
   *
   * const { signingKey, publicKey } = await JetStreamCluster.generateKeys();
   * assert.match(signingKey, /^mpipe-sk-[\w-]{64}$/);
   * assert.match(publicKey, /^mpipe-pk-[\w-]{43}$/);
   * ```
   */
  static generateKeys(): Promise<{ signingKey: string; publicKey: string }> {
    return generateKeys();
  }

  /**
   * Closes the cluster, like `close()`.
   *
   * @returns A Promise that settles once the connection is closed.
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Withdraws a run's announcements, then deletes its streams (and so their
   * consumers); on a connection of its own if the cluster was closed.
   */
  async #removeRun(configs: BridgeConfig[]): Promise<void> {
    let jsm = this.#jsm;
    let own: NatsConnection | null = null;
    if (this.#nc.isClosed()) {
      own = await connectNats(this.#options, "mpipe coordinator");
      jsm = await jetstreamManager(own);
    }
    try {
      await Promise.allSettled(configs.map(async ({ spec, announcement }) => {
        try {
          await jsm.streams.purge(STAGES_STREAM, { filter: announcement });
        } catch { /* The announcement is gone with its stream below. */ }
        try {
          await jsm.streams.delete(spec.stream);
        } catch (error) {
          // 10059: the stream was never made (the pipeline ended first).
          if (apiCode(error) !== 10059) throw error;
        }
      }));
    } finally {
      await own?.close();
    }
  }
}

/** The connection part of the options, as the stand-ins get it. */
function connectionOf(options: JetStreamClusterOptions): ConnectionOptions {
  const {
    ackWait: _a,
    maxAttempts: _m,
    maxBatch: _b,
    signingKey: _k,
    hostTimeout: _h,
    ...connection
  } = options;
  return connection;
}

function checkClusterOptions(options: unknown): JetStreamClusterOptions {
  const checked = checkConnectionOptions(
    "JetStreamCluster.connect",
    options,
  ) as JetStreamClusterOptions;
  const known = [
    ...CONNECTION_OPTION_NAMES,
    "ackWait",
    "maxAttempts",
    "maxBatch",
    "signingKey",
    "hostTimeout",
  ];
  checkOptionNames("JetStreamCluster.connect", checked, known);
  const positive = (key: "ackWait" | "maxAttempts" | "maxBatch", min = 1) => {
    const value = checked[key];
    if (
      value !== undefined &&
      !(typeof value === "number" && Number.isInteger(value) && value >= min)
    ) {
      throw new RangeError(
        `JetStreamCluster.connect: 'options.${key}' must be an integer of at least ${min}, got ${
          JSON.stringify(value)
        }`,
      );
    }
  };
  if (
    checked.signingKey !== undefined && typeof checked.signingKey !== "string"
  ) {
    throw new TypeError(
      `JetStreamCluster.connect: 'options.signingKey' must be a string (a key from JetStreamCluster.generateKeys()), got ${typeof checked
        .signingKey}`,
    );
  }
  const hostTimeout = checked.hostTimeout;
  if (
    hostTimeout !== undefined &&
    !(typeof hostTimeout === "number" &&
      (hostTimeout === Infinity ||
        (Number.isInteger(hostTimeout) && hostTimeout >= 1_000)))
  ) {
    throw new RangeError(
      `JetStreamCluster.connect: 'options.hostTimeout' must be an integer of at least 1000 (ms) or Infinity, got ${
        JSON.stringify(hostTimeout)
      }`,
    );
  }
  positive("ackWait", 100);
  positive("maxAttempts");
  positive("maxBatch");
  return checked;
}
