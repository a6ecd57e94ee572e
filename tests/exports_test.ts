// The public API is what mod.ts exports, and nothing else: every export is a
// promise kept for ever. These tests fail when an export appears or
// disappears, so that it never happens unnoticed. Update the lists only on
// purpose, with the README and the docs.

import assert from "node:assert/strict";
import * as mpipe from "../mod.ts";
import { docSymbols } from "./support/deno_doc.ts";

/** The values mod.ts exports (classes). */
const VALUES = [
  "ArenaFullError",
  "FilterStage",
  "OrderedStage",
  "OrderedWorker",
  "Pipeline",
  "PipelineClosedError",
  "Stage",
  "StageError",
  "TaskWorker",
  "UnorderedStage",
  "UnorderedWorker",
];

/** The types mod.ts exports besides the classes. */
const TYPES = [
  "ArenaStats",
  "ElasticSize",
  "FeedOptions",
  "Cluster",
  "ClusterRun",
  "FilterStageOptions",
  "GetOptions",
  "ModuleTarget",
  "PermissionValue",
  "PipelineOptions",
  "PipelineStats",
  "ProgressOptions",
  "PutOptions",
  "Resize",
  "RunEnd",
  "SlowTask",
  "RemoteStage",
  "RemoteTarget",
  "RetryOptions",
  "StageErrorOptions",
  "StageOptions",
  "StagePermissions",
  "StageStats",
  "Target",
  "TaskAttempts",
  "TaskDurations",
  "TaskFunction",
  "WorkerClass",
  "WorkerStats",
];

Deno.test("mod.ts exports exactly the public values", () => {
  assert.deepEqual(Object.keys(mpipe).sort(), VALUES);
});

Deno.test("mod.ts exports exactly the public symbols, each documented (deno doc)", async () => {
  const symbols = await docSymbols(new URL("../mod.ts", import.meta.url));
  assert.deepEqual(
    symbols.map((symbol) => symbol.name).sort(),
    [...VALUES, ...TYPES].sort(),
  );
  for (const symbol of symbols) {
    assert.ok(
      symbol.declarations.some((d) => (d.jsDoc?.doc ?? "").trim() !== ""),
      `${symbol.name} has no documentation`,
    );
  }
});
