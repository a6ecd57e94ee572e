/**
 * What coordinators and worker hosts say to each other on JetStream: the
 * names of streams and subjects, the messages, and how to connect.
 *
 * Per remote stage of a run, one work-queue stream `MPIPE_<run>_<stage>`
 * holds two subjects: `mpipe.<run>.<stage>.in`, the batches of tasks that
 * the hosts share through the durable consumer `hosts`, and
 * `mpipe.<run>.<stage>.out`, the hosts' answers, read by the stage's bridge
 * through the durable consumer `bridge`; and `mpipe.<run>.<stage>.alone.<k>`
 * counts the runs of task k alone on a host (no consumer reads them; see
 * `host.ts`). The stream `MPIPE_STAGES` holds one
 * announcement per live stage, `mpipe.stages.<run>.<stage>`, which every
 * host watches. Message bodies are the library's own codec (`codec.ts`).
 *
 * @module
 */

import { Decoder, Encoder } from "../codec.ts";
import type { RemoteTarget } from "../remote.ts";
import {
  connect,
  credsAuthenticator,
  type NatsConnection,
  type NodeConnectionOptions,
} from "./nats.ts";

/** The version of these messages; a host refuses a stage of another. */
export const PROTOCOL = 1;

/** The stream of stage announcements, and its subjects' prefix. */
export const STAGES_STREAM = "MPIPE_STAGES";
export const STAGES_SUBJECTS = "mpipe.stages.>";

/** The first element of an answer: results, or a refusal of the stage. */
export const ANSWER = 0;
export const REFUSED = 1;

/** An entry of an answer's extras: several results of one task, or its error. */
export const MANY = 0;
export const FAILED = 1;

/**
 * How to reach the NATS servers: the options of `JetStreamCluster.connect`
 * and of a worker host that concern the connection. Every field is plain
 * data, so that the options travel to the workers that connect on their own.
 */
export interface ConnectionOptions {
  /** The servers, `host:port` or a `nats://` / `tls://` URL, one or several. */
  servers: string | string[];
  /** A name for the connection, shown by the server (`nats-server` monitoring, logs). */
  name?: string;
  /** A user name (with `pass`), for servers with user accounts. */
  user?: string;
  /** The user's password. */
  pass?: string;
  /** An authentication token, for servers that take one. */
  token?: string;
  /** The path of a `.creds` file (a user JWT and its NKey seed), for servers in operator mode. */
  credentials?: string;
  /**
   * TLS: `true` to require it with the system's trust, or files (PEM) for a
   * private CA and a client certificate.
   */
  tls?: boolean | {
    /** The CA certificate(s) to trust. */
    caFile?: string;
    /** The client certificate, for servers that verify clients. */
    certFile?: string;
    /** The client certificate's key. */
    keyFile?: string;
    /** Start TLS before the server's greeting (servers with `handshake_first`). */
    handshakeFirst?: boolean;
  };
}

/** A remote stage as its bridge announces it to the hosts. */
export interface StageSpec {
  protocol: number;
  /** The run, and the stage's index in it. */
  run: string;
  index: number;
  /** The stage's name, for errors. */
  name: string;
  /** The stage's stream and its two subjects. */
  stream: string;
  inSubject: string;
  outSubject: string;
  /** The prefix of the subjects of its tasks' runs alone (see host.ts). */
  aloneSubject: string;
  target: RemoteTarget;
  /** The worker class's constructor arguments. */
  args: unknown[];
  /** How many tasks each host worker runs at once. */
  concurrency: number;
  /** Milliseconds a host may hold a batch without a sign of life. */
  ackWait: number;
  /** How many times a task may lose its host while it runs alone before it fails. */
  maxAttempts: number;
  /** How many times a task may be delivered at all (the consumer's `max_deliver`). */
  maxDeliver: number;
}

/** The names of a run's stage `index`. */
export function stageNames(run: string, index: number): {
  stream: string;
  inSubject: string;
  outSubject: string;
  aloneSubject: string;
  announcement: string;
} {
  return {
    stream: `MPIPE_${run}_${index}`,
    inSubject: `mpipe.${run}.${index}.in`,
    outSubject: `mpipe.${run}.${index}.out`,
    aloneSubject: `mpipe.${run}.${index}.alone`,
    announcement: `mpipe.stages.${run}.${index}`,
  };
}

/** Checks connection options, throwing a `TypeError` that names a bad one. */
export function checkConnectionOptions(
  where: string,
  options: unknown,
): ConnectionOptions {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`${where}: 'options' must be an object`);
  }
  const o = options as Record<string, unknown>;
  const servers = o.servers;
  if (
    !(typeof servers === "string" && servers !== "") &&
    !(Array.isArray(servers) && servers.length > 0 &&
      servers.every((s) => typeof s === "string" && s !== ""))
  ) {
    throw new TypeError(
      `${where}: 'options.servers' must be a server address ("127.0.0.1:4222") or an array of them, got ${
        JSON.stringify(servers)
      }`,
    );
  }
  for (const key of ["name", "user", "pass", "token", "credentials"]) {
    if (o[key] !== undefined && typeof o[key] !== "string") {
      throw new TypeError(
        `${where}: 'options.${key}' must be a string, got ${typeof o[key]}`,
      );
    }
  }
  if (
    o.tls !== undefined && typeof o.tls !== "boolean" &&
    (typeof o.tls !== "object" || o.tls === null)
  ) {
    throw new TypeError(
      `${where}: 'options.tls' must be true, false or { caFile, certFile, keyFile, handshakeFirst }`,
    );
  }
  return o as unknown as ConnectionOptions;
}

/** Connects to NATS with `options`; `role` names the connection when it has no name. */
export async function connectNats(
  options: ConnectionOptions,
  role: string,
): Promise<NatsConnection> {
  const nats: NodeConnectionOptions = {
    servers: options.servers,
    name: options.name === undefined ? role : `${options.name} (${role})`,
    // A request's TimeoutError then has no stack: it costs a third of the
    // client's CPU per publish otherwise (research, section 8).
    noAsyncTraces: true,
    // Keep trying while a server restarts: a run waits, it does not fail.
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
  };
  if (options.user !== undefined) nats.user = options.user;
  if (options.pass !== undefined) nats.pass = options.pass;
  if (options.token !== undefined) nats.token = options.token;
  if (options.credentials !== undefined) {
    nats.authenticator = credsAuthenticator(
      await Deno.readFile(options.credentials),
    );
  }
  if (options.tls === true) nats.tls = {};
  else if (typeof options.tls === "object") nats.tls = { ...options.tls };
  return await connect(nats);
}

/** Encodes `value` with the library's codec into bytes of its own. */
export function encodeMessage(encoder: Encoder, value: unknown): Uint8Array {
  const length = encoder.encode(value);
  return encoder.bytes.slice(0, length);
}

/** Decodes a message body that `encodeMessage` made. */
export function decodeMessage(decoder: Decoder, bytes: Uint8Array): unknown {
  // The decoder reads `bytes` and `view` at the same offsets, both from the
  // message's first byte.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return decoder.decode(bytes, view, 0);
}

/** Nanoseconds, as JetStream's durations are given, of `ms` milliseconds. */
export function nanosOf(ms: number): number {
  return Math.round(ms * 1_000_000);
}

/** The error code of a JetStream API error, if `error` is one. */
export function apiCode(error: unknown): number | undefined {
  const code = (error as { code?: unknown; api_error?: { err_code?: unknown } })
    ?.code;
  if (typeof code === "number") return code;
  const nested = (error as { api_error?: { err_code?: unknown } })?.api_error
    ?.err_code;
  return typeof nested === "number" ? nested : undefined;
}

export { Decoder, Encoder };
