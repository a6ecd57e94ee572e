/**
 * MPipe beyond one machine: stages that run on worker hosts of a NATS
 * JetStream cluster, with the API and the guarantees of local stages.
 *
 * Give a stage the `cluster` option, and its tasks run on the hosts
 * (`deno run --allow-net=SERVER jsr:@mpipe/mpipe/host --servers SERVER --trust KEY --allow-source`)
 * instead of this process's Web Workers: its size is how many of its tasks
 * may run at once across the cluster. An ordered remote stage still emits in
 * task order, the stop still drains it, a task that throws on a host still
 * fails the pipeline with a `StageError` (naming the host), and a host that
 * is killed loses nothing: its tasks go to other hosts, and each result
 * reaches the reader exactly once.
 *
 * Only this module (and the host) depend on the NATS client;
 * `@mpipe/mpipe` itself has no dependencies.
 *
 * @example A remote stage in a chain (needs a server and a host)
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
 * const increment = new OrderedStage((x: number) => x + 1);
 * const double = new OrderedStage((x: number) => x * 2, 64, { cluster });
 * increment.link(double);
 * const pipe = new Pipeline<number, number>(increment);
 * for (let i = 0; i < 5; i++) pipe.put(i);
 * pipe.put(null);
 * assert.deepEqual(await Array.fromAsync(pipe), [2, 4, 6, 8, 10]);
 * ```
 *
 * @module
 */

export { JetStreamCluster } from "./lib/jetstream/coordinator/cluster.ts";
export type { JetStreamClusterOptions } from "./lib/jetstream/coordinator/cluster.ts";
export { WorkerHost } from "./lib/jetstream/host/worker_host.ts";
export type { WorkerHostOptions } from "./lib/jetstream/host/host_options.ts";
export type { ConnectionOptions } from "./lib/jetstream/connection.ts";
