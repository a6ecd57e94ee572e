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

import { Arena } from "../shared_memory/arena.ts";
import { Bell } from "../shared_memory/bell.ts";
import { Dismissal } from "../shared_memory/dismissal.ts";
import { ClaimPolicy } from "../shared_memory/claim_policy.ts";
import { Decoder, Encoder } from "../shared_memory/codec.ts";
import { FilterRuntime } from "./filter_runtime.ts";
import { LinkReader } from "../shared_memory/link_reader.ts";
import { LinkWriter } from "../shared_memory/link_writer.ts";
import { Mutex } from "../shared_memory/mutex.ts";
import { Ring } from "../shared_memory/ring.ts";
import { HeldTable, StageStatus } from "../shared_memory/status.ts";
import { BatchRunner } from "./batch_runner.ts";
import { Retries } from "./retries.ts";
import { ConcurrentRunner } from "./concurrent_runner.ts";
import { IdleWait } from "./idle_wait.ts";
import { ElasticPlace } from "./elastic_place.ts";
import { TargetLoader } from "./target_loader.ts";
import { TaskTimeout } from "./task_timeout.ts";
import { TaskBuffers } from "./task_buffers.ts";
import { WorkerFigures } from "./figures.ts";
import { OrderedWorker, TaskWorker, UnorderedWorker } from "../stage/worker.ts";
import { WorkerRuntime } from "./runtime.ts";
import { WorkerScope } from "./scope.ts";

/** The engine's classes, in an order where each comes after what it extends. */
export const ENGINE_CLASSES: readonly unknown[] = [
  Dismissal,
  Bell,
  Mutex,
  Arena,
  Ring,
  StageStatus,
  ClaimPolicy,
  Encoder,
  Decoder,
  LinkReader,
  LinkWriter,
];

/**
 * A Blob URL of a worker script made of `parts` (classes and functions,
 * shipped by source) and a last line `main` that starts the worker, after
 * any `imports` (statements at the top of the module).
 */
export function scriptUrl(
  parts: readonly unknown[],
  main: string,
  imports = "",
): string {
  const source = imports + [...parts.map(String), main].join("\n\n");
  return URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
}

/** The scripts of stage workers, made once per process: by preloaded module ("" for none). */
const stageWorkerUrls = new Map<string, string>();

/**
 * The script of every stage worker. With `preload`, a module target's
 * specifier, the script imports that module statically: a sandboxed worker
 * (one with permissions) loads its main script's module graph with the
 * pipeline's permissions, but may not `import()` anything itself.
 */
export function stageWorkerScript(preload = ""): string {
  const known = stageWorkerUrls.get(preload);
  if (known !== undefined) return known;
  const imports = preload === ""
    ? ""
    : `import * as preloaded from ${JSON.stringify(preload)};\n` +
      `globalThis[Symbol.for(${
        JSON.stringify(TargetLoader.PRELOADED)
      })] = preloaded;\n`;
  const url = scriptUrl(
    [
      ...ENGINE_CLASSES,
      TaskWorker,
      OrderedWorker,
      UnorderedWorker,
      TargetLoader,
      WorkerScope,
      WorkerFigures,
      IdleWait,
      ElasticPlace,
      TaskTimeout,
      TaskBuffers,
      HeldTable,
      Retries,
      ConcurrentRunner,
      BatchRunner,
      FilterRuntime,
      WorkerRuntime,
    ],
    "self.onmessage = (event) => { self.onmessage = null; WorkerRuntime.start(event.data); };",
    imports,
  );
  stageWorkerUrls.set(preload, url);
  return url;
}
