/**
 * The progress display of `PipelineOptions.progress`: it reads the
 * pipeline's statistics (`stats.ts`) on a timer and writes to stderr, never
 * stdout. On an interactive terminal it redraws one line per stage in place;
 * elsewhere (CI, a log file) it writes a plain line per stage every
 * interval. At the end it writes a summary, in both cases.
 *
 * Its timer is unref'd: it never keeps a program alive, and the pipeline
 * calls `summarize()` once every worker is gone.
 *
 * @module
 */

import { workingShare } from "./insights.ts";
import type { ProgressOptions } from "../main_thread/options.ts";
import {
  bar,
  columns,
  count,
  duration,
  percent,
  plural,
  rate,
} from "./report_format.ts";
import type { PipelineStats, StageStats } from "./stats.ts";

/** Where the display writes: stderr, or a test's stand-in. */
export interface ProgressSink {
  /** Whether it is an interactive terminal, where lines are redrawn in place. */
  readonly isTerminal: boolean;
  /** Its width in columns, if known: longer lines are cut so they never wrap. */
  readonly columns: number | undefined;
  write(text: string): void;
}

/** The process's stderr, as a sink. */
export function stderrSink(): ProgressSink {
  const encoder = new TextEncoder();
  const isTerminal = Deno.stderr.isTerminal();
  let width: number | undefined;
  try {
    // A terminal of no known size (a bare pty) says 0.
    width = isTerminal ? Deno.consoleSize().columns || undefined : undefined;
  } catch {
    width = undefined;
  }
  return {
    isTerminal,
    columns: width,
    write(text: string) {
      const bytes = encoder.encode(text);
      try {
        // writeSync may write part of the bytes at a time.
        for (let at = 0; at < bytes.length;) {
          at += Deno.stderr.writeSync(bytes.subarray(at));
        }
      } catch {
        // A closed stderr (a pipe whose reader left) loses the display, not
        // the program: it runs from a timer, where a throw would end it.
      }
    },
  };
}

/** How the run ended, for the summary's first line. */
export type Outcome = "done" | "failed" | "terminated";

/** Each stage's figures at one moment, to measure rates over a window. */
export interface Sample {
  /** The pipeline's `elapsedMs`. */
  at: number;
  /** Per stage: tasks done (finished or skipped), ms working, ms since ready. */
  done: number[];
  working: number[];
  ready: number[];
}

/** Rates are measured over the last this many samples. */
const WINDOW = 3;
/** Cells of a stage's bar on a terminal; a narrow one shows no bar rather than one under the least. */
const BAR_WIDTH = 20;
const MIN_BAR_WIDTH = 5;
/** Ms between redraws on a terminal, and between plain lines elsewhere, by default. */
const TERMINAL_INTERVAL_MS = 200;
const PLAIN_INTERVAL_MS = 1000;
/** Moves the cursor to the start of the line `n` lines up. */
const UP = (n: number) => `\x1b[${n}F`;
/** Clears the cursor's line; clears from the cursor to the end of the screen. */
const CLEAR_LINE = "\x1b[2K";
const CLEAR_BELOW = "\x1b[J";

/** Draws a pipeline's progress until `summarize()`. */
export class ProgressDisplay {
  readonly #read: () => PipelineStats;
  readonly #sink: ProgressSink;
  readonly #total: number | undefined;
  readonly #timer: ReturnType<typeof setInterval>;
  /** The last `WINDOW` samples, oldest first. */
  #samples: Sample[] = [];
  /** Lines drawn on the terminal, to redraw over. */
  #drawn = 0;
  #summarized = false;

  /** Starts drawing what `read` returns on `sink`, every `options.intervalMs`. */
  constructor(
    read: () => PipelineStats,
    options: ProgressOptions,
    sink: ProgressSink = stderrSink(),
  ) {
    this.#read = read;
    this.#sink = sink;
    this.#total = options.total;
    const interval = options.intervalMs ??
      (sink.isTerminal ? TERMINAL_INTERVAL_MS : PLAIN_INTERVAL_MS);
    this.#timer = setInterval(() => this.update(), interval);
    // The display alone must not keep the program alive.
    Deno.unrefTimer(this.#timer);
  }

  /** Draws the figures of now: redraws the terminal's lines, or writes plain ones. */
  update(): void {
    if (this.#summarized) return;
    const stats = this.#read();
    this.#samples.push(sampleOf(stats));
    if (this.#samples.length > WINDOW) this.#samples.shift();
    const rowsWith = (barWidth: number) =>
      stats.stages.map((stage, i) =>
        stageCells(stage, i, this.#samples, this.#total, barWidth)
      );
    if (this.#sink.isTerminal) {
      const header = `mpipe ${duration(stats.elapsedMs)}: ${
        count(stats.put)
      } put, ${count(stats.read)} read`;
      const lines = (barWidth: number) =>
        columns(rowsWith(barWidth), new Set([1, 3, 4, 5, 6]));
      let drawn = lines(BAR_WIDTH);
      // In a narrow terminal the bar gives way first, so the figures after
      // it (ETA, backlog, busy) stay in sight; only then are lines cut.
      const over = Math.max(...drawn.map((line) => line.length)) -
        (this.#sink.columns ?? Infinity) + 1;
      if (over > 0) {
        const barWidth = BAR_WIDTH - over;
        drawn = lines(barWidth >= MIN_BAR_WIDTH ? barWidth : 0);
      }
      this.#redraw([header, ...drawn]);
      return;
    }
    const rows = rowsWith(0);
    const at = `[mpipe ${duration(stats.elapsedMs)}]`;
    this.#sink.write(
      rows.map(([name, ...cells]) =>
        `${at} ${name}: ${cells.filter((cell) => cell !== "").join(", ")}\n`
      ).join(""),
    );
  }

  /** Stops the display and writes the summary (once; later calls do nothing). */
  summarize(outcome: Outcome = "done"): void {
    if (this.#summarized) return;
    this.#summarized = true;
    clearInterval(this.#timer);
    const text = summaryLines(this.#read(), outcome)
      .map((line) => `${line}\n`).join("");
    // On a terminal the summary takes the place of the live lines.
    this.#sink.write(
      this.#drawn > 0 ? `${UP(this.#drawn)}${CLEAR_BELOW}${text}` : text,
    );
    this.#drawn = 0;
  }

  /** Draws `lines` over the lines drawn before, cut to the terminal's width. */
  #redraw(lines: string[]): void {
    const width = this.#sink.columns;
    // A line that wraps would take two rows, and the next redraw would
    // climb one row short.
    const fitted = width === undefined
      ? lines
      : lines.map((line) => line.slice(0, Math.max(1, width - 1)));
    const text = fitted.map((line) => `${CLEAR_LINE}${line}\n`).join("");
    this.#sink.write(this.#drawn > 0 ? `${UP(this.#drawn)}${text}` : text);
    this.#drawn = fitted.length;
  }
}

/** The figures of `stats` that rates are measured from. */
export function sampleOf(stats: PipelineStats): Sample {
  return {
    at: stats.elapsedMs,
    done: stats.stages.map((s) => s.tasks + s.skipped),
    working: stats.stages.map((s) =>
      s.workers.reduce((sum, w) => sum + w.busyMs - w.blockedMs, 0)
    ),
    ready: stats.stages.map((s) =>
      s.workers.reduce((sum, w) => sum + w.busyMs + w.idleMs, 0)
    ),
  };
}

/**
 * Stage `i`'s cells: its name, tasks done (of the total), a bar of
 * `barWidth` cells (none for 0) and a percentage (with a total), the rate, an ETA (with a
 * total), the backlog, its workers' busy share (blocked time left out), and
 * an elastic stage's workers now and at most.
 * Rates and shares are measured over `samples` (oldest first, the last one
 * now), or since the start with one sample. A cell that does not apply is
 * empty.
 */
export function stageCells(
  stage: StageStats,
  i: number,
  samples: readonly Sample[],
  total: number | undefined,
  barWidth: number,
): string[] {
  const first = samples[0]!;
  const now = samples.at(-1)!;
  const span = now.at - first.at;
  const done = now.done[i]!;
  // Figures may be a batch stale: a window never goes backwards.
  const perSecond = span > 0
    ? Math.max(0, done - first.done[i]!) / (span / 1000)
    : done / (now.at / 1000);
  const busy = span > 0
    ? Math.max(0, now.working[i]! - first.working[i]!) /
      Math.max(0, now.ready[i]! - first.ready[i]!)
    : now.working[i]! / now.ready[i]!;
  const backlog = `backlog ${count(stage.backlog)}`;
  const busyCell = `busy ${percent(busy)}`;
  const sizeCell = stage.elastic === null
    ? []
    : [`${stage.size}/${stage.elastic.max} workers`];
  // A filter's sub-pipelines see only the tasks it passes in.
  if (total === undefined || stage.within !== null) {
    return [
      stage.name,
      plural(done, "task"),
      "",
      rate(perSecond),
      "",
      backlog,
      busyCell,
      ...sizeCell,
    ];
  }
  const fraction = total === 0 ? 1 : Math.min(1, done / total);
  const left = Math.max(0, total - done);
  return [
    stage.name,
    `${count(done)}/${count(total)}`,
    barWidth > 0
      ? `${bar(fraction, barWidth)} ${percent(fraction)}`
      : percent(fraction),
    rate(perSecond),
    left === 0
      ? "ETA 0 s"
      : perSecond > 0
      ? `ETA ${duration((left / perSecond) * 1000)}`
      : "ETA —",
    backlog,
    busyCell,
    ...sizeCell,
  ];
}

/** The summary at the end: how the run ended, then a line per stage. */
export function summaryLines(stats: PipelineStats, outcome: Outcome): string[] {
  const seconds = stats.elapsedMs / 1000;
  const rows = stats.stages.map((stage) => [
    `  ${stage.name}`,
    plural(stage.tasks, "task"),
    rate(stage.tasks / seconds),
    `busy ${percent(workingShare(stage.workers))}`,
    stage.skipped > 0 ? `${count(stage.skipped)} skipped` : "",
    stage.inFlight + stage.backlog > 0
      ? `${count(stage.inFlight + stage.backlog)} left`
      : stage.dropped > 0
      ? `${count(stage.dropped)} dropped`
      : "",
    stage.elastic === null
      ? ""
      : `${stage.lowestSize} to ${stage.highestSize} workers`,
  ]);
  return [
    `mpipe: ${outcome} in ${duration(stats.elapsedMs)}: ${
      plural(stats.put, "task")
    } put, ${plural(stats.read, "result")} read`,
    ...columns(rows, new Set([1, 2])),
  ];
}
