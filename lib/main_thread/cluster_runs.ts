/**
 * Opens a pipeline's runs on the clusters its remote stages use, as the
 * pipeline is built, and records each remote stage's stand-in worker. The
 * contract itself (`Cluster`, `ClusterRun`) is in `lib/stage/cluster.ts`.
 *
 * @module
 */

import type { Cluster, ClusterRun } from "../stage/cluster.ts";
import { type AnyStage, internalsOf } from "../stage/internals.ts";

/**
 * Opens a run on each cluster that `stages` use, and records each remote
 * stage's stand-in worker in its internals. Returns the runs, for the
 * pipeline to close when it is done.
 */
export function openClusterRuns(stages: readonly AnyStage[]): ClusterRun[] {
  const byCluster = new Map<Cluster, AnyStage[]>();
  for (const stage of stages) {
    const cluster = internalsOf(stage).cluster;
    if (cluster === null) continue;
    const list = byCluster.get(cluster) ?? [];
    list.push(stage);
    byCluster.set(cluster, list);
  }
  const runs: ClusterRun[] = [];
  for (const [cluster, remote] of byCluster) {
    const run = cluster.openRun(remote.map((stage) => {
      const state = internalsOf(stage);
      return {
        name: stage.name,
        target: state.shipped,
        size: stage.size,
        concurrency: state.concurrency,
        args: state.args,
        taskTimeout: state.taskTimeout,
        crashBudget: state.crashBudget,
      };
    }));
    runs.push(run);
    remote.forEach((stage, index) => {
      internalsOf(stage).standIn = run.standIn(index);
    });
  }
  return runs;
}
