// Side-by-side comparison of MPipe and the plain postMessage baseline on the workloads of
// /work/shared/BENCHMARKS.md, at full size, each measurement in a fresh process, project and
// baselines alternating, and a markdown table of medians, ranges and ratios at the end.
//
//   deno run --allow-read --allow-run bench/compare.ts [--rounds N] [--quick] [--only W1,W4]
//                                                      [--timeout SECONDS] [--no-bare]
//                                                      [--progress]
//
// (`--allow-sys=osRelease,loadavg` spares the subprocesses that read the kernel release and
// the load average for the header.) Progress goes to stderr, the table to stdout.
//
// Each measurement is a child process `deno run --allow-read bench/measure.ts <case>
// <variant> [--quick]` printing one JSON line; a child that fails or exceeds the timeout is
// reported and left out of the table. Throughput workloads (W1, W2, W4, W4L, W5) run 6 timed
// passes of N through one pipeline per process: the first pass (pass 1) and the steady state
// (median of passes 2–6) are tabulated apart, each against the same figure of the baselines.
// With W1, every round also runs `bench/bare_rings.ts` (the project's own Ring, the same two
// stages in tight loops, no API, runs of 16 records), and W1's steady state is quoted as a
// share of it (goal: at least 75%); `--no-bare` leaves it out. W4 and W4L (4 MiB tasks) also
// run MPipe by reference (variant mpipe-ref: tasks from `pipe.alloc`, on the arena), in rows
// of their own against the same baselines. `--progress` shows MPipe's
// progress display (PipelineOptions.progress) while each MPipe child of W1–W6 runs: the
// child's stderr then goes to ours (a failed child's message with it), and its figures
// include the display's small cost.

import { fileURLToPath } from "node:url";
import {
  BARE_BATCH,
  bareCount,
  type Case,
  CASES,
  figure,
  type Figures,
  parseCases,
  PASSES,
  sizeOf,
  STARTUP_WORKERS,
  THROUGHPUT,
  VARIANTS,
} from "./cases.ts";
import {
  cell,
  format,
  loadAverage,
  machine,
  type Outcome,
  ratioCell,
  runChild,
  type Style,
  timestamp,
} from "./harness.ts";
import type { WorkloadId } from "./mpipe_runner.ts";
import { spread } from "./stats.ts";

/** The bare-ring reference, run in W1's rounds as a variant of its own. */
const BARE = "bare";

/** W1's steady state should be at least this share of the bare rings. */
const BARE_GOAL = 0.75;

const MEASURE = fileURLToPath(new URL("./measure.ts", import.meta.url));
const BARE_RINGS = fileURLToPath(new URL("./bare_rings.ts", import.meta.url));

interface Options {
  rounds: number;
  quick: boolean;
  only: Case[];
  timeoutS: number;
  bare: boolean;
  progress: boolean;
}

const USAGE =
  "usage: compare.ts [--rounds N] [--quick] [--only W1,W4,...] [--timeout SECONDS] [--no-bare] [--progress]";

function parseArgs(args: string[]): Options {
  const o: Options = {
    rounds: 3,
    quick: false,
    only: [...CASES],
    timeoutS: 300,
    bare: true,
    progress: false,
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = () => {
      const v = args[++i];
      if (v === undefined) throw new TypeError(`${a} needs a value; ${USAGE}`);
      return v;
    };
    if (a === "--quick") o.quick = true;
    else if (a === "--no-bare") o.bare = false;
    else if (a === "--progress") o.progress = true;
    else if (a === "--rounds") o.rounds = Number(value());
    else if (a === "--timeout") o.timeoutS = Number(value());
    else if (a === "--only") o.only = parseCases(value());
    else throw new TypeError(`unknown argument ${a}; ${USAGE}`);
  }
  if (!Number.isInteger(o.rounds) || o.rounds < 1) {
    throw new RangeError(
      `'--rounds' must be a positive integer, got ${o.rounds}`,
    );
  }
  if (!(o.timeoutS > 0)) {
    throw new RangeError(`'--timeout' must be positive, got ${o.timeoutS}`);
  }
  return o;
}

/** The variants of `what` in this run: W1 gains the bare rings unless `--no-bare`. */
function variantsOf(what: Case, o: Options): string[] {
  const list = [...VARIANTS[what]];
  if (what === "W1" && o.bare) list.push(BARE);
  return list;
}

/**
 * The order of `what`'s variants in round `round`: the simple baseline, MPipe, the bare
 * rings, the other baseline; reversed in odd rounds, so that no side always runs on a
 * warmer (or busier) machine and MPipe always sits next to the baseline and the bare rings.
 */
function orderOf(what: Case, round: number, o: Options): string[] {
  const variants = variantsOf(what, o);
  const order = [
    variants[0]!,
    "mpipe",
    ...variants.filter((v) => v === BARE),
    ...variants.slice(1).filter((v) => v !== "mpipe" && v !== BARE),
  ];
  return round % 2 === 0 ? order : order.reverse();
}

function runOne(what: Case, variant: string, o: Options): Promise<Outcome> {
  if (variant === BARE) {
    return runChild({
      script: BARE_RINGS,
      args: [String(bareCount(o.quick)), String(BARE_BATCH)],
      permissions: [],
      timeoutS: o.timeoutS,
    });
  }
  // Start-up and idle build their pipelines without the display.
  const progress = o.progress && variant === "mpipe" &&
    what !== "startup" && what !== "idle";
  return runChild({
    script: MEASURE,
    args: [
      what,
      variant,
      ...(o.quick ? ["--quick"] : []),
      ...(progress ? ["--progress"] : []),
    ],
    permissions: ["--allow-read"],
    timeoutS: o.timeoutS,
    inheritStderr: progress,
  });
}

/** One line of progress for a child's figures. */
function summary(f: Figures, what: Case, variant: string): string {
  const n = (x: number | undefined, style: Style) =>
    x === undefined ? "?" : format(x, style);
  if (variant === BARE) {
    return `${n(figure(f, "itemsPerSecond"), "rate")} items/s`;
  }
  if (THROUGHPUT.includes(what)) {
    const style: Style = what === "W4" || what === "W4L" ? "int" : "rate";
    const passes = Array.isArray(f.perPass)
      ? f.perPass.map((x) => format(x, style)).join(" | ")
      : "?";
    return `steady ${n(figure(f, "steady"), style)} ${f.unit}, first ${
      n(figure(f, "first"), style)
    } (passes ${passes})`;
  }
  switch (what) {
    case "W3":
      return `speedup ${n(figure(f, "speedup"), { digits: 2 })}, efficiency ${
        n(figure(f, "efficiency2"), { digits: 2 })
      }`;
    case "W6":
      return `p50 ${n(figure(f, "p50"), { digits: 1 })} µs, p99 ${
        n(figure(f, "p99"), { digits: 1 })
      } µs`;
    case "startup":
      return `${n(figure(f, "ms"), { digits: 1 })} ms`;
    default:
      return `${n(figure(f, "cpu"), { digits: 4 })} of a core`;
  }
}

/** Every child's figures by `${case} ${variant}`, indexed by round (undefined: failed). */
type Results = Map<string, (Figures | undefined)[]>;

/** One row of the table. */
interface Row {
  what: Case;
  label: string;
  figure: string;
  key: string;
  style: Style;
  /** The simple baseline's variant (start-up: bare Workers). */
  base?: string;
  /** MPipe's variant in the MPipe column: "mpipe", or "mpipe-ref" (W4 by reference, on the arena). */
  mpipe?: string;
}

function rows(o: Options): Row[] {
  const n = (id: WorkloadId) => sizeOf(id, o.quick).toLocaleString("en");
  const passes = (id: WorkloadId) => `N ${n(id)} × ${PASSES} passes`;
  const throughput = (
    id: WorkloadId & Case,
    what: string,
    unit: string,
    style: Style,
    mpipe = "mpipe",
  ): Row[] => [
    {
      what: id,
      label: `${id} ${what} (${passes(id)})`,
      figure: `${unit}, steady state ↑`,
      key: "steady",
      style,
      mpipe,
    },
    {
      what: id,
      label: id,
      figure: `${unit}, first pass ↑`,
      key: "first",
      style,
      mpipe,
    },
  ];
  const digits = (d: number): Style => ({ digits: d });
  return [
    ...throughput("W1", "2 ordered stages ×1", "items/s", "rate"),
    ...throughput("W2", "2 unordered stages ×2", "items/s", "rate"),
    {
      what: "W3",
      label: `W3 ~1 ms tasks, 1 vs 2 workers (N ${n("W3")})`,
      figure: "speedup t₁/t₂ ↑",
      key: "speedup",
      style: digits(2),
    },
    {
      what: "W3",
      label: "W3",
      figure: "efficiency, 2 workers ↑",
      key: "efficiency2",
      style: digits(2),
    },
    {
      what: "W3",
      label: "W3",
      figure: "efficiency, 1 worker ↑",
      key: "efficiency1",
      style: digits(2),
    },
    {
      what: "W3",
      label: "W3",
      figure: "items/s, 2 workers ↑",
      key: "itemsPerSec2",
      style: "int",
    },
    ...throughput("W4", "64 KiB identity", "MB/s", "int"),
    ...throughput("W4", "by reference (arena)", "MB/s", "int", "mpipe-ref"),
    ...throughput("W4L", "4 MiB identity", "MB/s", "int"),
    ...throughput("W4L", "by reference (arena)", "MB/s", "int", "mpipe-ref"),
    ...throughput("W5", "3 ordered stages, objects", "items/s", "rate"),
    {
      what: "W6",
      label: `W6 round trip (N ${n("W6")})`,
      figure: "p50 µs ↓",
      key: "p50",
      style: digits(1),
    },
    {
      what: "W6",
      label: "W6",
      figure: "p99 µs ↓",
      key: "p99",
      style: digits(1),
    },
    {
      what: "startup",
      label:
        `start-up, ${STARTUP_WORKERS} workers (baseline: bare Workers + ping)`,
      figure: "ms ↓",
      key: "ms",
      style: digits(1),
      base: "workers",
    },
    {
      what: "idle",
      label: "idle, 2 stages × 2 workers, 2 s",
      figure: "CPU, fraction of one core ↓",
      key: "cpu",
      style: digits(4),
    },
  ];
}

/** The values of `key` over the rounds of `what variant`. */
function valuesOf(
  results: Results,
  what: Case,
  variant: string,
  key: string,
): number[] {
  return (results.get(`${what} ${variant}`) ?? [])
    .map((f) => figure(f, key))
    .filter((x): x is number => x !== undefined);
}

/** The ratios `a ÷ b` of `key` within each round where both were measured. */
function roundRatios(
  results: Results,
  a: [Case, string, string],
  b: [Case, string, string],
): number[] {
  const as = results.get(`${a[0]} ${a[1]}`) ?? [];
  const bs = results.get(`${b[0]} ${b[1]}`) ?? [];
  const ratios: number[] = [];
  for (let round = 0; round < as.length; round++) {
    const x = figure(as[round], a[2]);
    const y = figure(bs[round], b[2]);
    if (x !== undefined && y !== undefined && y !== 0) ratios.push(x / y);
  }
  return ratios;
}

function table(results: Results, o: Options): string {
  const lines: string[] = [
    "| workload | figure | postMessage (simple) | postMessage batch 256 / transfer | MPipe | MPipe ÷ simple | MPipe ÷ batch/transfer |",
    "|---|---|--:|--:|--:|--:|--:|",
  ];
  for (const r of rows(o)) {
    if (!o.only.includes(r.what)) continue;
    const base = r.base ?? "pm";
    const mpipe = r.mpipe ?? "mpipe";
    const second = VARIANTS[r.what].find((v) =>
      v !== base && !v.startsWith("mpipe")
    );
    const of = (variant: string) =>
      cell(spread(valuesOf(results, r.what, variant, r.key)), r.style);
    const ratio = (variant: string) =>
      ratioCell(
        spread(
          roundRatios(results, [r.what, mpipe, r.key], [
            r.what,
            variant,
            r.key,
          ]),
        ),
      );
    lines.push(
      `| ${r.label} | ${r.figure} | ${of(base)} | ${
        second === undefined ? "—" : of(second)
      } | ${of(mpipe)} | ${ratio(base)} | ${
        second === undefined ? "—" : ratio(second)
      } |`,
    );
    if (r.what === "W1" && r.key === "first" && o.bare) {
      const bare = spread(valuesOf(results, "W1", BARE, "itemsPerSecond"));
      lines.push(
        `| W1 bare rings: own Ring, no API, runs of ${BARE_BATCH} (N ${
          bareCount(o.quick).toLocaleString("en")
        }, 1 pass) | items/s ↑ | — | — | ${cell(bare, "rate")} | — | — |`,
      );
    }
  }
  return lines.join("\n");
}

/** "W1 steady state … 85% (70–95%) of the bare rings …", or undefined without both. */
function bareShare(results: Results, o: Options): string | undefined {
  if (!o.bare || !o.only.includes("W1")) return undefined;
  const share = spread(
    roundRatios(results, ["W1", "mpipe", "steady"], [
      "W1",
      BARE,
      "itemsPerSecond",
    ]),
  );
  if (share === undefined) {
    return "W1 steady state as a share of the bare rings: not measured (a child failed)";
  }
  const pct = (x: number) => `${Math.round(x * 100)}%`;
  const range = share.count > 1
    ? ` (${pct(share.min)}–${pct(share.max)} over ${share.count} rounds)`
    : "";
  return `W1 steady state as a share of the bare rings of the same round: **${
    pct(share.median)
  }**${range}; goal ≥ ${pct(BARE_GOAL)}: ${
    share.median >= BARE_GOAL ? "met" : "not met"
  }${
    o.quick
      ? " (quick run: N / 10 and 1/10 of the bare count, indicative only)"
      : ""
  }.`;
}

async function main(o: Options): Promise<void> {
  const info = await machine();
  const date = timestamp();
  const loadBefore = await loadAverage();
  console.error(`Machine: ${info}`);
  console.error(
    `${o.rounds} round(s), ${o.quick ? "quick (N / 10)" : "full N"}, cases: ${
      o.only.join(", ")
    }${o.only.includes("W1") && o.bare ? " (W1 with bare rings)" : ""}`,
  );
  const results: Results = new Map();
  const failures: string[] = [];
  const started = performance.now();
  for (let round = 0; round < o.rounds; round++) {
    for (const what of o.only) {
      for (const variant of orderOf(what, round, o)) {
        const t0 = performance.now();
        const outcome = await runOne(what, variant, o);
        const s = ((performance.now() - t0) / 1000).toFixed(1);
        const tag = `[round ${round + 1}/${o.rounds}] ${what} ${variant}`;
        const key = `${what} ${variant}`;
        if (!results.has(key)) results.set(key, []);
        if (outcome.ok) {
          results.get(key)![round] = outcome.figures;
          console.error(
            `${tag}: ${summary(outcome.figures, what, variant)} (${s} s)`,
          );
        } else {
          failures.push(`${tag}: ${outcome.error}`);
          console.error(`${tag}: FAILED, skipped: ${outcome.error}`);
        }
      }
    }
  }
  const total = ((performance.now() - started) / 1000).toFixed(0);
  console.log(
    `## MPipe vs postMessage — medians (min–max) of ${o.rounds} fresh process(es) per cell\n`,
  );
  console.log(`Machine: ${info}  `);
  console.log(`Date: ${date}  `);
  console.log(
    `Mode: ${
      o.quick ? "quick (N / 10)" : "full N (BENCHMARKS.md)"
    }; warm-up as BENCHMARKS.md; throughput workloads run ${PASSES} timed passes of N per process: first pass = pass 1, steady state = median of passes 2–${PASSES}; ↑ higher is better, ↓ lower is better; ratios are the median (min–max) over rounds of MPipe ÷ the baseline process of the same round; ${total} s in all; load average ${loadBefore} before, ${await loadAverage()} after.\n`,
  );
  console.log(table(results, o));
  const share = bareShare(results, o);
  if (share !== undefined) console.log(`\n${share}`);
  if (failures.length > 0) {
    console.log(`\nFailed measurements (left out of the medians):\n`);
    for (const f of failures) {
      console.log(`- ${f.replaceAll("\n", " ⏎ ").slice(0, 800)}`);
    }
  }
}

if (import.meta.main) await main(parseArgs(Deno.args));
