/**
 * `pipe.insights()`: a readable report of a run, from its statistics alone
 * (`stats.ts`), in the manner of mpire's insights: per stage and per worker
 * the start-up, `doInit`, working, blocked and waiting time and their
 * shares; each stage's slowest tasks; the stage that held the run back, with
 * the figures that show it; and a warning for each stage whose workers
 * worked little while tasks waited at its input; and the resizings of its
 * elastic stages, with the figures that drove them.
 *
 * @module
 */

import {
  columns,
  count,
  duration,
  ms,
  percent,
  plural,
  rate,
} from "./report_format.ts";
import type { PipelineStats, StageStats, WorkerStats } from "./stats.ts";

/** A stage whose workers worked at least this share of their time held the run back. */
const BOTTLENECK_SHARE = 0.5;
/** Workers that work less than this share of their time, while tasks wait for them, get a warning. */
const WARN_SHARE = 0.8;
/** A stage whose working time was at least this share awaiting (timers, I/O) wants concurrency, not workers. */
const AWAIT_SHARE = 0.5;
/** The most resizings listed: the first ones and the last ones, the rest counted. */
const RESIZES_SHOWN = 30;
/** A stage's input counts as waiting when its producers waited for room this share of the run. */
const FULL_SHARE = 0.01;

/** A worker's time since it was ready, and how it went. */
interface Times {
  /** Busy, less blocked: running tasks. */
  working: number;
  /** Of `working`, awaiting tasks' Promises, the thread free. */
  awaiting: number;
  blocked: number;
  waiting: number;
  /** Since it was ready: busy and waiting. */
  ready: number;
}

function timesOf(workers: readonly WorkerStats[]): Times {
  const times = { working: 0, awaiting: 0, blocked: 0, waiting: 0, ready: 0 };
  for (const worker of workers) {
    const blocked = Math.min(worker.blockedMs, worker.busyMs);
    times.working += worker.busyMs - blocked;
    // A result written after an await may have blocked within it.
    times.awaiting += Math.min(worker.awaitingMs, worker.busyMs - blocked);
    times.blocked += blocked;
    times.waiting += worker.idleMs;
    times.ready += worker.busyMs + worker.idleMs;
  }
  return times;
}

/** The share of `part` in `whole`, NaN when there is no whole. */
function share(part: number, whole: number): number {
  return whole > 0 ? part / whole : NaN;
}

/** `'name'`, with its position when another stage has the same name. */
function label(stats: PipelineStats, index: number): string {
  const name = stats.stages[index]!.name;
  const same = stats.stages.filter((s) => s.name === name).length;
  return same > 1 ? `'${name}' (stage ${index + 1})` : `'${name}'`;
}

/** How the report's first line ends, by how the run ended. */
const ENDINGS = {
  running: "so far (the run goes on)",
  stop: "(the run is over)",
  failure: "(the run failed)",
  terminate: "(the run was terminated)",
};

/** Writes the report of `stats`. */
export function insightsReport(stats: PipelineStats): string {
  const lines = [
    `MPipe insights: ${plural(stats.stages.length, "stage")}, ${
      plural(stats.put, "task")
    } put, ${plural(stats.read, "result")} read, ${duration(stats.elapsedMs)} ${
      ENDINGS[stats.end ?? "running"]
    }`,
    "",
  ];
  stats.stages.forEach((_, i) => lines.push(...stageSection(stats, i), ""));
  if (stats.resizes.length > 0) lines.push(...resizingSection(stats), "");
  lines.push(
    "working (running tasks), awaiting (the part of working spent awaiting async tasks: timers, I/O), blocked (writing results to a full ring or backlog) and waiting (for tasks): ms and share of each worker's time since it was ready; start-up and doInit: ms and share of the run.",
    "",
    bottleneckText(stats),
  );
  const warnings = warningsOf(stats);
  lines.push(
    "",
    ...(warnings.length === 0
      ? ["No warnings."]
      : warnings.map((warning) => `Warning: ${warning}`)),
  );
  return lines.join("\n");
}

/** The resizings of the elastic stages, at most `RESIZES_SHOWN` of them. */
function resizingSection(stats: PipelineStats): string[] {
  const all = stats.resizes;
  const line = (r: PipelineStats["resizes"][number]) =>
    `  '${r.stage}' ${r.from} → ${r.to} at ${duration(r.atMs)}: ${r.why}`;
  const head = RESIZES_SHOWN - 10;
  const shown = all.length <= RESIZES_SHOWN ? all.map(line) : [
    ...all.slice(0, head).map(line),
    `  … ${count(all.length - RESIZES_SHOWN)} more …`,
    ...all.slice(-10).map(line),
  ];
  return [`Resizing (${plural(all.length, "decision")}):`, ...shown];
}

/** A stage's workers: "3 workers", or for an elastic stage "3 workers (elastic 1 to 4, lowest 1, highest 4)". */
function workersText(stage: StageStats): string {
  const elastic = stage.elastic;
  return plural(stage.size, "worker") +
    (elastic === null
      ? ""
      : ` (elastic ${elastic.min} to ${elastic.max}, lowest ${stage.lowestSize}, highest ${stage.highestSize})`);
}

function stageSection(stats: PipelineStats, index: number): string[] {
  const stage = stats.stages[index]!;
  const kind = [
    stage.ordered ? "ordered" : "unordered",
    workersText(stage),
    ...(stage.within === null
      ? []
      : [`in the sub-pipeline of filter ${label(stats, stage.within)}`]),
  ].join(", ");
  const lines = [
    `Stage ${index + 1} ${label(stats, index)} (${kind}): ${
      plural(stage.received, "task")
    } reached it, ${count(stage.tasks)} done, ${
      count(stage.skipped)
    } skipped, ${plural(stage.results, "result")}${
      stage.inFlight + stage.backlog > 0
        ? `; ${count(stage.inFlight)} in flight, ${
          count(stage.backlog)
        } waiting`
        : ""
    }${
      stage.dropped > 0
        ? `; ${count(stage.dropped)} dropped when the run ended early`
        : ""
    }`,
  ];
  const run = stats.elapsedMs;
  // Each time is a column of ms and a column of its share.
  const rows = [[
    "  worker",
    "start-up",
    "",
    "doInit",
    "",
    "working",
    "",
    "awaiting",
    "",
    "blocked",
    "",
    "waiting",
    "",
    "tasks",
    "skipped",
    "restarts",
  ]];
  const time = (value: number, whole: number) => [
    ms(value),
    percent(share(value, whole)),
  ];
  stage.workers.forEach((worker, i) => {
    const times = timesOf([worker]);
    rows.push([
      `  #${i}`,
      ...time(worker.startMs, run),
      ...time(worker.initMs, run),
      ...time(times.working, times.ready),
      ...time(times.awaiting, times.ready),
      ...time(times.blocked, times.ready),
      ...time(times.waiting, times.ready),
      count(worker.tasks),
      count(worker.skipped),
      count(worker.restarts),
    ]);
  });
  // Every column but the worker's number is figures, aligned right.
  const figures = new Set(rows[0]!.map((_, i) => i).slice(1));
  lines.push(...columns(rows, figures));
  if (stage.slowest.length > 0) {
    lines.push(
      `  slowest tasks (by sequence number): ${
        stage.slowest.map((slow) =>
          `${slow.task} in ${ms(slow.ms)}${
            stage.size > 1 ? ` (worker #${slow.worker})` : ""
          }`
        ).join(", ")
      }`,
    );
  }
  if (stage.retries > 0 || stage.quarantined > 0) {
    lines.push(
      `  retries: ${count(stage.retries)}${
        stage.quarantined > 0
          ? `; ${
            count(stage.quarantined)
          } quarantined (each cost the stage its crashBudget of workers)`
          : ""
      }${
        stage.retried.length > 0
          ? `; tasks that needed retries (by sequence number): ${
            stage.retried.map((task) =>
              `${task.task} (${task.attempts} attempts${
                stage.size > 1 ? `, worker #${task.worker}` : ""
              })`
            ).join(", ")
          }`
          : ""
      }`,
    );
  }
  return lines;
}

/**
 * The share of their time since ready that `workers` spent working (blocked
 * time left out); NaN before any was ready.
 */
export function workingShare(workers: readonly WorkerStats[]): number {
  const times = timesOf(workers);
  return share(times.working, times.ready);
}

/**
 * The stages of the main line (not in a filter's sub-pipeline) whose
 * workers have been ready, busiest first: by the share of their time they
 * worked. A filter's sub-pipelines are left out, since the filter sheds
 * what they cannot take.
 */
function byWorkingShare(
  stats: PipelineStats,
): { index: number; share: number }[] {
  return stats.stages
    .map((stage, index) => ({ index, share: workingShare(stage.workers) }))
    .filter(({ index, share }) =>
      stats.stages[index]!.within === null && share >= 0
    )
    .sort((a, b) => b.share - a.share);
}

/**
 * The stage that held the run back (its index in `stats.stages`), or null
 * if none did (yet), and the report's sentence that says so.
 */
export function bottleneckOf(
  stats: PipelineStats,
): { stage: number | null; text: string } {
  const [top] = byWorkingShare(stats);
  return {
    stage: top !== undefined && top.share >= BOTTLENECK_SHARE
      ? top.index
      : null,
    text: bottleneckText(stats),
  };
}

function bottleneckText(stats: PipelineStats): string {
  const [top, second] = byWorkingShare(stats);
  if (top === undefined) {
    return "Bottleneck: none yet: no worker has been ready long enough to tell.";
  }
  const stage = stats.stages[top.index]!;
  const times = timesOf(stage.workers);
  const nextText = second === undefined
    ? ""
    : `; the next busiest stage, ${label(stats, second.index)}, worked ${
      percent(second.share)
    }`;
  const perTask = stage.tasks + stage.skipped > 0
    ? `, ${ms(times.working / (stage.tasks + stage.skipped))} a task`
    : "";
  if (top.share >= BOTTLENECK_SHARE) {
    const evidence = waitingEvidence(stats, top.index);
    return `Bottleneck: stage ${label(stats, top.index)} held the run back. ${
      stage.size === 1
        ? "Its worker worked"
        : `Its ${stage.size} workers worked`
    } ${percent(top.share)} of ${
      stage.size === 1 ? "its" : "their"
    } time since ready (${ms(times.working)} of ${ms(times.ready)}${
      stage.size > 1 ? " over its workers" : ""
    }) on ${plural(stage.tasks, "task")}${perTask}, ${
      rate(stage.tasks / (stats.elapsedMs / 1000))
    } over the run${nextText}.${
      evidence === null ? "" : ` Tasks waited for it: ${evidence}.`
    } ${advice(stage, times)}`;
  }
  return `Bottleneck: no stage was busy most of its time (the busiest, ${
    label(stats, top.index)
  }, worked ${percent(top.share)}): ${heldBackBy(stats)}.`;
}

/** What would speed up a stage that held the run back: more workers, or more tasks at once in each. */
function advice(stage: StageStats, times: Times): string {
  const awaiting = share(times.awaiting, times.working);
  if (awaiting >= AWAIT_SHARE) {
    return `Most of that time (${
      percent(awaiting)
    }) its tasks were awaiting (timers, I/O), not computing: its ${
      stage.size === 1 ? "worker's thread was" : "workers' threads were"
    } free meanwhile. More tasks at once in each worker (a higher 'concurrency' option) would speed the run up more cheaply than more workers.`;
  }
  if (stage.elastic !== null) {
    return `More workers for it (it had up to ${stage.highestSize} of its most ${stage.elastic.max}${
      stage.highestSize < stage.elastic.max
        ? ", within the pipeline's 'threads' budget"
        : ""
    }), or a faster task, would speed the run up.`;
  }
  return `More workers for it (it has ${stage.size}), or a faster task, would speed the run up.`;
}

/** What held a run back in which no stage was busy. */
function heldBackBy(stats: PipelineStats): string {
  const leaves = stats.stages.filter((s) =>
    s.within === null && s.next.length === 0
  );
  const out = timesOf(leaves.flatMap((s) => s.workers));
  if (share(out.blocked, out.ready) >= 0.2) {
    return `its output: the last stages were blocked ${
      percent(share(out.blocked, out.ready))
    } of their time writing results out, so results were read slower than they came`;
  }
  const startUp = Math.max(
    0,
    ...stats.stages.flatMap((s) => s.workers.map((w) => w.startMs + w.initMs)),
  );
  if (share(startUp, stats.elapsedMs) >= 0.5) {
    return `start-up: the workers took up to ${ms(startUp)} of the ${
      ms(stats.elapsedMs)
    } run to be ready (a longer run would show more)`;
  }
  return "its input: tasks were put slower than the stages could take them";
}

/** How tasks waited at stage `index`'s input, or null if nothing shows they did. */
function waitingEvidence(stats: PipelineStats, index: number): string | null {
  const stage = stats.stages[index]!;
  const found: string[] = [];
  if (
    stage.fullMs >= 1 && share(stage.fullMs, stats.elapsedMs) >= FULL_SHARE
  ) {
    found.push(
      `its input was full: ${producersOf(stats, index)} waited ${
        ms(stage.fullMs)
      } for room there`,
    );
  }
  if (stage.backlog > 0) {
    found.push(`${plural(stage.backlog, "task")} wait at its input now`);
  }
  return found.length === 0 ? null : found.join("; ");
}

/** Who puts tasks into stage `index`: `put`, the stages linked to it, or its filter. */
function producersOf(stats: PipelineStats, index: number): string {
  if (index === 0) return "put";
  const before = stats.stages.flatMap((stage, i) =>
    stage.next.includes(index) ? [label(stats, i)] : []
  );
  if (before.length > 0) return before.join(" and ");
  const within = stats.stages[index]!.within;
  return within === null ? "its producers" : `filter ${label(stats, within)}`;
}

function warningsOf(stats: PipelineStats): string[] {
  const warnings: string[] = [];
  stats.stages.forEach((stage, index) => {
    const times = timesOf(stage.workers);
    const working = share(times.working, times.ready);
    // NaN (never ready) is not below the bar.
    if (!(working < WARN_SHARE)) return;
    const evidence = waitingEvidence(stats, index);
    if (evidence === null) return;
    const [workers, their, they] = stage.size === 1
      ? ["its worker was", "its", "it was"]
      : ["its workers were", "their", "they were"];
    warnings.push(
      `stage ${label(stats, index)}: ${workers} working only ${
        percent(working)
      } of ${their} time since ready while tasks waited at its input (${evidence}): ${they} ${
        blockedOrIdle(stats, stage, times)
      }.`,
    );
  });
  return warnings;
}

/** Why a stage with tasks waiting did not work: blocked downstream, or idle. */
function blockedOrIdle(
  stats: PipelineStats,
  stage: StageStats,
  times: Times,
): string {
  if (times.blocked >= times.waiting) {
    const to = stage.next.length === 0
      ? "out, and results were read slower than they came"
      : `to ${
        stage.next.map((next) => label(stats, next)).join(" and ")
      }, which did not take them fast enough`;
    return `blocked ${
      percent(share(times.blocked, times.ready))
    } of it writing results ${to}`;
  }
  return `idle ${
    percent(share(times.waiting, times.ready))
  } of it, with tasks it could not take: an ordered merge at its input waits for a slow task of the stage before`;
}
