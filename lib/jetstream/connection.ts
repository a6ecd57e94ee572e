// deno-lint-ignore-file no-import-prefix
/**
 * The NATS client, in one place: only `@mpipe/mpipe/jetstream` (and the
 * host) import it, never `mod.ts`. Also how MPipe connects
 * (`ConnectionOptions`, `connectNats`) and what the client's errors mean
 * (`apiCode`, `noResponders`, `permanent`).
 *
 * The specifiers are written inline, pinned, rather than in `deno.json`'s
 * import map: a project that maps `@mpipe/mpipe` to a checkout or a URL of
 * this package then needs no entry of its own for them. (Re-exports are
 * outside `deno lint`'s no-import-prefix rule, which looks at imports.)
 *
 * The imports, too, are inline (hence the lint rule is off in this file).
 * `connect` is the client's own, with one repair: no socket error can
 * escape as an uncaught exception (see `GuardedTransport`).
 *
 * @module
 */

import type { Socket } from "node:net";
import type { JsMsg } from "npm:@nats-io/jetstream@3.4.0";
import { checkObject } from "../checks.ts";
import {
  connect as tlsConnect,
  type ConnectionOptions as TlsOptions,
  type TLSSocket,
} from "node:tls";
import {
  credsAuthenticator,
  type NatsConnection,
  NatsConnectionImpl,
  type NodeConnectionOptions,
  setTransportFactory,
} from "npm:@nats-io/transport-node@3.4.0";
import {
  nodeResolveHost,
  NodeTransport,
} from "npm:@nats-io/transport-node@3.4.0/lib/node_transport.js";

export { credsAuthenticator, headers } from "npm:@nats-io/transport-node@3.4.0";
export type {
  NatsConnection,
  NodeConnectionOptions,
} from "npm:@nats-io/transport-node@3.4.0";
export {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from "npm:@nats-io/jetstream@3.4.0";
export type {
  Consumer,
  JetStreamClient,
  JetStreamManager,
  JsMsg,
} from "npm:@nats-io/jetstream@3.4.0";

/**
 * The subject a JetStream message is acked on (its reply subject): anyone
 * who publishes `-NAK` there makes the server deliver it again at once.
 */
export function replyOf(message: JsMsg): string {
  return (message as JsMsg & { reply: string }).reply;
}

/**
 * The client's transport, whose sockets never throw an error no one hears.
 *
 * The client removes all of a socket's listeners when it closes it (a
 * refused login, a server going away) and between the steps of a connect.
 * Under Deno, a read still in flight then ends with `ECONNRESET`, or a TLS
 * alert such as `BadCertificate` arrives in the read that ends the
 * handshake, and an `error` event with no listener is thrown as an uncaught
 * exception: it killed the process. Here such an error is kept instead,
 * and it closes the connection once the client listens again, so the
 * client sees it as it sees any lost connection (a refused connect).
 */
class GuardedTransport extends NodeTransport {
  /** An error that came while no one listened, for `setupHandlers`. */
  #unheard: Error | undefined;

  constructor() {
    super();
    // `socket` is a field of the base class: each socket it is given is
    // guarded before the client uses it.
    let socket: Socket | undefined;
    Object.defineProperty(this, "socket", {
      get: () => socket,
      set: (value: Socket | undefined) => {
        if (value !== undefined) this.#guard(value);
        socket = value;
      },
    });
  }

  /**
   * The client's upgrade to TLS, with the TLS socket guarded as soon as it
   * exists: a server that refuses the client's certificate sends its alert
   * in the read that ends the handshake, before the client has the socket.
   */
  override async startTLS(): Promise<TLSSocket> {
    const options = {
      socket: this.socket,
      servername: this.tlsName,
      rejectUnauthorized: true,
      ...(typeof this.options.tls === "object" ? this.options.tls : {}),
      ...await this.loadClientCerts(),
    } as TlsOptions;
    return await new Promise<TLSSocket>((resolve, reject) => {
      let failure: Error | undefined;
      const socket = tlsConnect(options, () => {
        socket.removeAllListeners();
        // Not a throw from the listener, as the client's: a rejection.
        if (options.rejectUnauthorized !== false && !socket.authorized) {
          socket.destroy();
          reject(socket.authorizationError);
        } else resolve(socket);
      });
      this.#guard(socket);
      socket.on("error", (error) => failure = error);
      socket.on("close", () => {
        socket.removeAllListeners();
        reject(failure ?? new Error("the server closed the connection"));
      });
    });
  }

  /** The client's handlers, then the close of a connection that failed unheard. */
  override setupHandlers(): void {
    super.setupHandlers();
    if (this.#unheard !== undefined) this.close(this.#unheard);
  }

  /** Makes `socket` keep an `error` event that has no listener, instead of throwing it. */
  #guard(socket: Socket): void {
    const emit = socket.emit.bind(socket) as (
      event: string | symbol,
      ...args: unknown[]
    ) => boolean;
    socket.emit = ((event: string | symbol, ...args: unknown[]) => {
      if (event === "error" && socket.listenerCount("error") === 0) {
        this.#unheard ??= args[0] instanceof Error
          ? args[0]
          : new Error(String(args[0]));
        return false;
      }
      return emit(event, ...args);
    }) as Socket["emit"];
  }
}

/** Connects to NATS as the client's `connect` does, over `GuardedTransport`. */
export function connect(
  options: NodeConnectionOptions,
): Promise<NatsConnection> {
  // The factory is the client's global: set it for each connect, as the
  // client's own `connect` does (a reconnect uses the one set last).
  setTransportFactory({
    factory: () => new GuardedTransport(),
    dnsResolveFn: nodeResolveHost,
  });
  return NatsConnectionImpl.connect(options);
}

/**
 * How to reach the NATS servers: the options of `JetStreamCluster.connect`
 * and of a worker host that concern the connection. Every field is plain
 * data, so that the options travel to the workers that connect on their own.
 *
 * @example A user account over TLS with a private CA
 * ```ts ignore
 * import type { ConnectionOptions } from "@mpipe/mpipe/jetstream";
 * import assert from "node:assert/strict";
 *
 * const connection: ConnectionOptions = {
 *   servers: "tls://nats.example.com:4222",
 *   user: "mpipe",
 *   pass: Deno.env.get("MPIPE_NATS_PASS"),
 *   tls: { caFile: "/etc/mpipe/ca.pem" },
 * };
 * assert.equal(connection.user, "mpipe");
 * ```
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

/** The names of `ConnectionOptions`, which every option list of a cluster or host begins with. */
export const CONNECTION_OPTION_NAMES: readonly string[] = [
  "servers",
  "name",
  "user",
  "pass",
  "token",
  "credentials",
  "tls",
];

/** Checks connection options, throwing a `TypeError` that names a bad one. */
export function checkConnectionOptions(
  where: string,
  options: unknown,
): ConnectionOptions {
  const o = checkObject(where, "options", options);
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

/** The error code of a JetStream API error, if `error` is one. */
export function apiCode(error: unknown): number | undefined {
  const code = (error as { code?: unknown; api_error?: { err_code?: unknown } })
    ?.code;
  if (typeof code === "number") return code;
  const nested = (error as { api_error?: { err_code?: unknown } })?.api_error
    ?.err_code;
  return typeof nested === "number" ? nested : undefined;
}

/** Whether a publish failed because no stream listens on the subject (or JetStream is not up yet). */
export function noResponders(error: unknown): boolean {
  const e = error as { name?: unknown; isNoResponders?: () => boolean };
  return e?.name === "JetStreamNotEnabled" || e?.name === "NoResponders" ||
    (e?.name === "RequestError" && e.isNoResponders?.() === true);
}

/**
 * Whether a publish failed for good: too large for the server, a subject
 * the client may not publish to, or a closed connection. Anything else (a
 * timeout, a reconnection, a restarting server) may pass.
 */
export function permanent(error: unknown): boolean {
  const name = (error as { name?: unknown })?.name;
  return name === "InvalidArgumentError" ||
    name === "InvalidSubjectError" ||
    name === "PermissionViolationError" ||
    name === "AuthorizationError" ||
    name === "ClosedConnectionError";
}

/** Resolves after `ms` milliseconds (a retry's backoff). */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
