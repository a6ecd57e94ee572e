// deno-lint-ignore-file no-import-prefix
/**
 * The NATS client, in one place: only `@mpipe/mpipe/jetstream` (and the
 * host) import it, never `mod.ts`.
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
import {
  connect as tlsConnect,
  type ConnectionOptions,
  type TLSSocket,
} from "node:tls";
import {
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
  JetStreamClient,
  JetStreamManager,
  JsMsg,
} from "npm:@nats-io/jetstream@3.4.0";

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
    } as ConnectionOptions;
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
