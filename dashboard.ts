/**
 * Watch pipelines live: a page in the browser and metrics that Prometheus
 * can scrape, served by one HTTP server (`Deno.serve`). It lives apart from
 * `@mpipe/mpipe` so that the main module opens no socket.
 *
 * The page (`GET /`) is one self-contained HTML document that updates itself
 * 2.5 times a second over Server-Sent Events: each pipeline's stage graph
 * (forks, joins and a `FilterStage`'s sub-pipelines) with each stage's
 * workers (a remote stage's hosts), tasks done, rate, backlog and the shares of time its workers were
 * busy, blocked and waiting; the stage that holds the run back, since when
 * (as far as the dashboard's looks tell), with `insights()`' sentence; a chart of each stage's rate over the last
 * minutes; the workers' rows; the slowest tasks; the pipeline's state, and
 * its `StageError` in full. `GET /metrics` serves the same figures in the
 * Prometheus text format (see `metricsText`).
 *
 * The server reads what `pipe.stats()` reads, from the shared memory the
 * workers write anyway, once a tick however many pages watch: it sends the
 * workers nothing and adds nothing to their work. Without a token it
 * answers only requests that name a loopback host (a site that points its
 * name at 127.0.0.1 reads nothing), and its page runs no script but its own.
 *
 * @example Watch a pipeline
 * ```ts
 * import { serveDashboard } from "@mpipe/mpipe/dashboard";
 * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const square = new OrderedStage((x: number) => x * x, 2, { name: "square" });
 * const pipe = new Pipeline(square, { name: "squares" });
 * await using dashboard = serveDashboard(pipe);
 * console.log(`watch it at ${dashboard.url}`);
 * await pipe.feed([1, 2, 3]);
 * assert.deepEqual(await Array.fromAsync(pipe), [1, 4, 9]);
 * ```
 *
 * @module
 */

import { metricsOf } from "./lib/dashboard/metrics.ts";
import {
  checkSource,
  pipelinesOf,
  type PipelineSource,
  viewsOf,
} from "./lib/dashboard/model.ts";
import {
  type Dashboard,
  type DashboardOptions,
  serve,
} from "./lib/dashboard/server.ts";

export type { Dashboard, DashboardOptions, PipelineSource };

/**
 * Serves the dashboard of `pipelines` on one HTTP server: the page at `/`,
 * the metrics at `/metrics`. It keeps the program alive while it serves;
 * once closed (`close()`, `options.signal`, or `await using`), nothing of it
 * does.
 *
 * @param pipelines A `Pipeline`, an array of them, or a function that
 * returns the current list (called at each request).
 * @param options The address, a signal that closes the server, and a token.
 * @returns The running dashboard: its `url`, `finished` and `close()`.
 * @throws {TypeError} If `pipelines` or an option is of the wrong type, or
 * if `hostname` is not loopback and no `token` is given.
 * @throws {RangeError} If `port` is out of range.
 *
 * @example Two pipelines on one page
 * ```ts
 * import { serveDashboard } from "@mpipe/mpipe/dashboard";
 * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const a = new Pipeline(new OrderedStage((x: number) => x + 1), { name: "a" });
 * const b = new Pipeline(new OrderedStage((x: string) => x.trim()), { name: "b" });
 * await using dashboard = serveDashboard([a, b], { port: 0 });
 * const page = await (await fetch(dashboard.url)).text();
 * assert.match(page, /<title>MPipe dashboard<\/title>/);
 * await a.feed([1]);
 * await b.feed([" x "]);
 * assert.deepEqual(await Array.fromAsync(a), [2]);
 * assert.deepEqual(await Array.fromAsync(b), ["x"]);
 * ```
 */
export function serveDashboard(
  pipelines: PipelineSource,
  options: DashboardOptions = {},
): Dashboard {
  return serve(checkSource("serveDashboard", pipelines), options);
}

/**
 * The figures of `pipelines` in the Prometheus text exposition format
 * (0.0.4), for a program that already runs an HTTP server: what
 * `GET /metrics` of `serveDashboard` serves. Serve it with the content type
 * `text/plain; version=0.0.4; charset=utf-8`.
 *
 * Series are labelled `pipeline` (`PipelineOptions.name`) and `stage` (the
 * stage's name; `name (stage N)` when names repeat in a pipeline):
 * counters `mpipe_pipeline_tasks_put_total`,
 * `mpipe_pipeline_results_read_total`, `mpipe_stage_tasks_total`,
 * `mpipe_stage_results_total`, `mpipe_stage_skipped_total`,
 * `mpipe_stage_restarts_total`, `mpipe_stage_busy_seconds_total`,
 * `mpipe_stage_blocked_seconds_total`, `mpipe_stage_idle_seconds_total`;
 * gauges `mpipe_stage_backlog`, `mpipe_stage_in_flight`,
 * `mpipe_stage_workers` (the stage's workers in this process: one for a
 * remote stage); the histogram `mpipe_stage_task_duration_seconds` (fixed
 * buckets from 10 µs to 10 s, as `StageStats.durations`).
 *
 * @param pipelines A `Pipeline`, an array of them, or a function that
 * returns them.
 * @returns The text, ending with a newline.
 * @throws {TypeError} If `pipelines` is not a pipeline or a list of them.
 *
 * @example The metrics of a finished run
 * ```ts
 * import { metricsText } from "@mpipe/mpipe/dashboard";
 * import { OrderedStage, Pipeline } from "@mpipe/mpipe";
 * import assert from "node:assert/strict";
 *
 * const double = new OrderedStage((x: number) => x * 2, 1, { name: "double" });
 * const pipe = new Pipeline(double, { name: "doubles" });
 * await pipe.feed([1, 2, 3]);
 * await Array.fromAsync(pipe);
 * await pipe.done;
 * assert.match(
 *   metricsText(pipe),
 *   /mpipe_stage_tasks_total\{pipeline="doubles",stage="double"\} 3/,
 * );
 * ```
 */
export function metricsText(pipelines: PipelineSource): string {
  return metricsOf(viewsOf(pipelinesOf(checkSource("metricsText", pipelines))));
}
