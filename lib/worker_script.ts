/**
 * The one script every stage worker runs: the classes shipped to workers by
 * their source text, and the line that starts the runtime.
 *
 * A shipped class refers only to globals and to the other shipped classes by
 * name (so none may use a module-level helper), and keeps its constants as
 * static fields. A worker built from a Blob URL needs no permission.
 *
 * @module
 */

import { Bell } from "./bell.ts";
import { ClaimPolicy } from "./claim_policy.ts";
import { Decoder, Encoder } from "./codec.ts";
import { FilterRuntime } from "./filter_runtime.ts";
import { InputLink, OutputPort } from "./link.ts";
import { Mutex } from "./mutex.ts";
import { Ring } from "./ring.ts";
import { StageStatus } from "./status.ts";
import { TargetLoader } from "./target_loader.ts";
import { OrderedWorker, TaskWorker, UnorderedWorker } from "./worker.ts";
import { WorkerRuntime } from "./worker_runtime.ts";
import { WorkerScope } from "./worker_scope.ts";

/** The engine's classes, in an order where each comes after what it extends. */
export const ENGINE_CLASSES: readonly unknown[] = [
  Bell,
  Mutex,
  Ring,
  StageStatus,
  ClaimPolicy,
  Encoder,
  Decoder,
  InputLink,
  OutputPort,
];

/**
 * A Blob URL of a worker script made of `parts` (classes and functions,
 * shipped by source) and a last line `main` that starts the worker.
 */
export function scriptUrl(parts: readonly unknown[], main: string): string {
  const source = [...parts.map(String), main].join("\n\n");
  return URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
}

let stageWorkerUrl: string | undefined;

/** The script of every stage worker, made once per process. */
export function stageWorkerScript(): string {
  stageWorkerUrl ??= scriptUrl(
    [
      ...ENGINE_CLASSES,
      TaskWorker,
      OrderedWorker,
      UnorderedWorker,
      TargetLoader,
      WorkerScope,
      FilterRuntime,
      WorkerRuntime,
    ],
    "self.onmessage = (event) => { self.onmessage = null; WorkerRuntime.start(event.data); };",
  );
  return stageWorkerUrl;
}
