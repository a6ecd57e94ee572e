// What the comparison scripts measure, shared by the child that measures one case in a fresh
// process (measure.ts) and the parents that run children and tabulate them (compare.ts,
// ab.ts): the cases, their variants, their sizes and the shape of a child's JSON line.

import type { WorkloadId } from "./mpipe_runner.ts";
import * as w from "./workloads.ts";

/** Everything measured, in the order of the tables. */
export const CASES = [
  "W1",
  "W2",
  "W3",
  "W4",
  "W4L",
  "W5",
  "W6",
  "startup",
  "idle",
] as const;

/** One measured case: a workload of BENCHMARKS.md, start-up or idle. */
export type Case = typeof CASES[number];

/** The throughput workloads: 6 timed passes per process, first pass and steady state. */
export const THROUGHPUT: readonly Case[] = ["W1", "W2", "W4", "W4L", "W5"];

/**
 * Timed passes of N per throughput process (BENCHMARKS.md): pass 1 is the first pass, the
 * median of passes 2–6 the steady state.
 */
export const PASSES = 6;

/** The variants of each case: the simple baseline first, MPipe last. */
export const VARIANTS: Record<Case, readonly string[]> = {
  W1: ["pm", "pm-batch", "mpipe"],
  W2: ["pm", "pm-batch", "mpipe"],
  W3: ["pm", "mpipe"],
  W4: ["pm", "pm-transfer", "mpipe", "mpipe-ref"],
  W4L: ["pm", "pm-transfer", "mpipe", "mpipe-ref"],
  W5: ["pm", "pm-batch", "mpipe"],
  W6: ["pm", "mpipe"],
  startup: ["workers", "mpipe"],
  idle: ["pm", "mpipe"],
};

/** Workers of the start-up case. */
export const STARTUP_WORKERS = 4;

/** How long the idle case leaves its pipeline waiting, in ms. */
export const IDLE_MS = 2000;

/** Tasks per timed pass of workload `id`: N of BENCHMARKS.md, or a tenth of it when quick. */
export function sizeOf(id: WorkloadId, quick: boolean): number {
  return quick ? Math.max(1, Math.round(w.N[id] / 10)) : w.N[id];
}

/** Items through `bench/bare_rings.ts` per process (it times one pass). */
export function bareCount(quick: boolean): number {
  return quick ? 200_000 : 2_000_000;
}

/** Records per wake-up in the bare-ring reference. */
export const BARE_BATCH = 16;

/**
 * One child's JSON line: `case`, `variant`, `n`, and the figures of that case.
 *
 * - Throughput: `unit` ("items/s" or "MB/s"), `perPass` (the figure of every pass),
 *   `seconds` (of every pass), `first` (pass 1) and `steady` (median of passes 2–6).
 * - W3: `speedup`, `efficiency1`, `efficiency2`, `itemsPerSec2`, `wallMs1`, `wallMs2`, …
 * - W6: `p50`, `p99`, `mean` (µs). Start-up: `ms`. Idle: `cpu` (fraction of one core).
 * - Bare rings (`bench/bare_rings.ts`): `itemsPerSecond`.
 */
export type Figures = Record<string, number | number[] | string>;

/** The number `key` of `f`, or undefined if it is missing or not a number. */
export function figure(
  f: Figures | undefined,
  key: string,
): number | undefined {
  const x = f?.[key];
  return typeof x === "number" && Number.isFinite(x) ? x : undefined;
}

/** Parses a comma-separated `--only` list into cases (case-insensitive). */
export function parseCases(list: string): Case[] {
  return list.split(",").map((s) => {
    const c = CASES.find((x) => x.toLowerCase() === s.trim().toLowerCase());
    if (c === undefined) {
      throw new RangeError(
        `--only: unknown case '${s}'; known: ${CASES.join(", ")}`,
      );
    }
    return c;
  });
}
