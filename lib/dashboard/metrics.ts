/**
 * The pipelines' figures in the Prometheus text exposition format (0.0.4):
 * what `GET /metrics` serves and `metricsText` returns. One series per
 * pipeline (label `pipeline`) and per stage (labels `pipeline` and `stage`),
 * from the same views the page draws (`model.ts`).
 *
 * @module
 */

import type { PipelineView, StageView } from "./model.ts";

/** The content type of the text format. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

interface Metric {
  name: string;
  type: "counter" | "gauge";
  help: string;
  value: (stage: StageView) => number;
}

const sum = (
  stage: StageView,
  key: "busyMs" | "blockedMs" | "idleMs" | "restarts",
) => stage.stats.workers.reduce((total, worker) => total + worker[key], 0);

const STAGE_METRICS: Metric[] = [
  {
    name: "mpipe_stage_tasks_total",
    type: "counter",
    help: "Tasks the stage's workers finished, with a result or without.",
    value: (stage) => stage.stats.tasks,
  },
  {
    name: "mpipe_stage_results_total",
    type: "counter",
    help: "Results the stage put downstream, or out for a last stage.",
    value: (stage) => stage.stats.results,
  },
  {
    name: "mpipe_stage_skipped_total",
    type: "counter",
    help:
      "Tasks the stage dropped: by onError, past taskTimeout, or held by a lost worker.",
    value: (stage) => stage.stats.skipped,
  },
  {
    name: "mpipe_stage_restarts_total",
    type: "counter",
    help: "Times a new worker took the place of one of the stage's workers.",
    value: (stage) => sum(stage, "restarts"),
  },
  {
    name: "mpipe_stage_retries_total",
    type: "counter",
    help: "Retries the stage's workers started (the retry option).",
    value: (stage) => stage.stats.retries,
  },
  {
    name: "mpipe_stage_quarantined_total",
    type: "counter",
    help:
      "Tasks the stage quarantined: each cost it its crashBudget of workers (counted in skipped too).",
    value: (stage) => stage.stats.quarantined,
  },
  {
    name: "mpipe_stage_busy_seconds_total",
    type: "counter",
    help:
      "Seconds the stage's workers spent running tasks, blocked time included.",
    value: (stage) => sum(stage, "busyMs") / 1000,
  },
  {
    name: "mpipe_stage_blocked_seconds_total",
    type: "counter",
    help:
      "Seconds of the busy time the stage's workers were blocked writing results (a full ring or maxBacklog downstream).",
    value: (stage) => sum(stage, "blockedMs") / 1000,
  },
  {
    name: "mpipe_stage_idle_seconds_total",
    type: "counter",
    help: "Seconds the stage's workers spent waiting for tasks.",
    value: (stage) => sum(stage, "idleMs") / 1000,
  },
  {
    name: "mpipe_stage_backlog",
    type: "gauge",
    help: "Tasks waiting at the stage's input, not yet taken.",
    value: (stage) => stage.stats.backlog,
  },
  {
    name: "mpipe_stage_in_flight",
    type: "gauge",
    help: "Tasks the stage's workers have taken and not yet finished.",
    value: (stage) => stage.stats.inFlight,
  },
  {
    name: "mpipe_stage_workers",
    type: "gauge",
    help:
      "The stage's workers in this process (a remote stage has one, which runs its tasks on its cluster): the busy, blocked and idle seconds are theirs.",
    value: (stage) => stage.stats.workers.length,
  },
];

/** The text of `views`, every metric's HELP and TYPE once, ending with a newline. */
export function metricsOf(views: readonly PipelineView[]): string {
  const lines: string[] = [];
  const pipelineMetric = (
    name: string,
    help: string,
    value: (view: PipelineView) => number,
  ) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`);
    for (const view of views) {
      lines.push(
        `${name}{pipeline="${escape(view.name)}"} ${number(value(view))}`,
      );
    }
  };
  pipelineMetric(
    "mpipe_pipeline_tasks_put_total",
    "Tasks that entered the pipeline.",
    (view) => view.put,
  );
  pipelineMetric(
    "mpipe_pipeline_results_read_total",
    "Results read out of the pipeline.",
    (view) => view.read,
  );
  for (const metric of STAGE_METRICS) {
    lines.push(
      `# HELP ${metric.name} ${metric.help}`,
      `# TYPE ${metric.name} ${metric.type}`,
    );
    for (const view of views) {
      for (const stage of view.stages) {
        lines.push(
          `${metric.name}{pipeline="${escape(view.name)}",stage="${
            escape(stage.label)
          }"} ${number(metric.value(stage))}`,
        );
      }
    }
  }
  const histogram = "mpipe_stage_task_duration_seconds";
  lines.push(
    `# HELP ${histogram} Seconds a task took (a batch's time per task), in fixed buckets from 10 µs to 10 s.`,
    `# TYPE ${histogram} histogram`,
  );
  for (const view of views) {
    for (const stage of view.stages) {
      const labels = `pipeline="${escape(view.name)}",stage="${
        escape(stage.label)
      }"`;
      const { boundsMs, counts, sumMs } = stage.stats.durations;
      let count = 0;
      counts.forEach((n, i) => {
        count += n;
        const le = i < boundsMs.length ? String(boundsMs[i]! / 1000) : "+Inf";
        lines.push(`${histogram}_bucket{${labels},le="${le}"} ${count}`);
      });
      lines.push(
        `${histogram}_sum{${labels}} ${number(sumMs / 1000)}`,
        `${histogram}_count{${labels}} ${count}`,
      );
    }
  }
  return lines.join("\n") + "\n";
}

/** A label value, escaped as the format asks. */
function escape(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(
    /\n/g,
    "\\n",
  );
}

function number(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (!Number.isFinite(value)) return value > 0 ? "+Inf" : "-Inf";
  return String(value);
}
