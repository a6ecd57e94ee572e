/**
 * The NATS client, in one place: only `@mpipe/mpipe/jetstream` (and the
 * host) import it, never `mod.ts`.
 *
 * The specifiers are written inline, pinned, rather than in `deno.json`'s
 * import map: a project that maps `@mpipe/mpipe` to a checkout or a URL of
 * this package then needs no entry of its own for them. (Re-exports are
 * outside `deno lint`'s no-import-prefix rule, which looks at imports.)
 *
 * @module
 */

export {
  connect,
  credsAuthenticator,
  headers,
} from "npm:@nats-io/transport-node@3.4.0";
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
