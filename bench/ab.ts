// A/B comparison of two commits of the library, MPipe side only, on the workloads of
// /work/shared/BENCHMARKS.md, each measurement in a fresh process, A and B alternating.
//
//   deno run -A bench/ab.ts <commitA> <commitB> [--pairs 5] [--only W1,W2,W5,W6] [--quick]
//                           [--timeout SECONDS]
//
// (`deno task bench:ab …` grants exactly the permissions needed.) A commit is anything
// `git rev-parse` takes (a hash, a branch, HEAD~3), or `.` for this checkout's working tree
// with its uncommitted changes.
//
// Each commit is exported with `git archive` into a temporary directory (the repository
// itself is only read: no worktree is registered), and every measurement runs this
// checkout's bench/measure.ts with `--lib <export>/mod.ts`: the bench code, the workloads
// and the 6-pass protocol are today's, so that commits whose bench/ predates them can still
// be measured; only the library (mod.ts and what it imports, the worker runtime included) is
// the commit's. Pairs alternate their order (A B, B A, A B, …) so that neither side always
// runs first; the cases interleave within each pair. The table gives, per figure, the median
// (min–max) of A and of B, B ÷ A of the medians, and in how many pairs B did better. The
// exports are removed at the end, after a failure, and on Ctrl-C or SIGTERM (a second Ctrl-C
// exits at once, removing them synchronously).

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  type Case,
  figure,
  type Figures,
  parseCases,
  PASSES,
  sizeOf,
  THROUGHPUT,
} from "./cases.ts";
import {
  cell,
  format,
  loadAverage,
  machine,
  runChild,
  type Style,
  timestamp,
} from "./harness.ts";
import { median, spread } from "./stats.ts";

const MEASURE = fileURLToPath(new URL("./measure.ts", import.meta.url));
const CHECKOUT = dirname(dirname(MEASURE));

const DEFAULT_CASES: Case[] = ["W1", "W2", "W4", "W5", "W6"];

interface Options {
  commits: [string, string];
  pairs: number;
  only: Case[];
  quick: boolean;
  timeoutS: number;
}

const USAGE =
  "usage: ab.ts <commitA> <commitB> [--pairs 5] [--only W1,W2,W5,W6] [--quick] [--timeout SECONDS]";

function parseArgs(args: string[]): Options {
  const commits: string[] = [];
  const o = { pairs: 5, only: DEFAULT_CASES, quick: false, timeoutS: 300 };
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = () => {
      const v = args[++i];
      if (v === undefined) throw new TypeError(`${a} needs a value; ${USAGE}`);
      return v;
    };
    if (a === "--quick") o.quick = true;
    else if (a === "--pairs") o.pairs = Number(value());
    else if (a === "--only") o.only = parseCases(value());
    else if (a === "--timeout") o.timeoutS = Number(value());
    else if (a.startsWith("--")) {
      throw new TypeError(`unknown option ${a}; ${USAGE}`);
    } else commits.push(a);
  }
  if (commits.length !== 2) {
    throw new TypeError(
      `need two commits, got ${commits.length} (${
        commits.join(" ")
      }); ${USAGE}`,
    );
  }
  if (!Number.isInteger(o.pairs) || o.pairs < 1) {
    throw new RangeError(
      `'--pairs' must be a positive integer, got ${o.pairs}`,
    );
  }
  if (!(o.timeoutS > 0)) {
    throw new RangeError(`'--timeout' must be positive, got ${o.timeoutS}`);
  }
  return { ...o, commits: commits as [string, string] };
}

// ================================================================ the two libraries

/** One side of the comparison. */
interface Side {
  /** "A" or "B". */
  name: string;
  /** The full commit hash, or "." for the working tree. */
  commit: string;
  /** Short hash and subject, for the header. */
  title: string;
  /** The mod.ts the children import. */
  modPath: string;
}

async function git(args: string[]): Promise<string> {
  const out = await new Deno.Command("git", {
    args: ["-C", CHECKOUT, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`git ${args.join(" ")} failed: ${err}`);
  }
  return new TextDecoder().decode(out.stdout).trim();
}

/** Resolves `spec` to a commit and exports its tree into `dir` (`.`: this checkout). */
async function prepare(name: string, spec: string, dir: string): Promise<Side> {
  if (spec === ".") {
    const head = await git(["log", "-1", "--format=%h"]);
    const dirty = await git(["status", "--porcelain", "--", "mod.ts", "lib"]);
    return {
      name,
      commit: ".",
      title: `working tree of ${CHECKOUT} (HEAD ${head}${
        dirty === "" ? ", no changes to mod.ts or lib/" : ", with changes"
      })`,
      modPath: join(CHECKOUT, "mod.ts"),
    };
  }
  let commit: string;
  try {
    commit = await git([
      "rev-parse",
      "--verify",
      "--quiet",
      `${spec}^{commit}`,
    ]);
  } catch {
    throw new RangeError(
      `'${spec}' is not a commit of the repository at ${CHECKOUT}; pass a hash, a branch or HEAD~N`,
    );
  }
  const title = await git(["log", "-1", "--format=%h %s", commit]);
  await Deno.mkdir(dir, { recursive: true });
  const tar = `${dir}.tar`;
  await git(["archive", "--format=tar", `--output=${tar}`, commit]);
  const out = await new Deno.Command("tar", {
    args: ["-xf", tar, "-C", dir],
    stdin: "null",
    stderr: "piped",
  }).output();
  await Deno.remove(tar);
  if (!out.success) {
    throw new Error(
      `tar -xf ${tar} failed: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
  const modPath = join(dir, "mod.ts");
  try {
    await Deno.stat(modPath);
  } catch {
    throw new RangeError(`commit ${title} has no mod.ts at its root`);
  }
  return {
    name,
    commit,
    title: title.length > 100 ? title.slice(0, 99) + "…" : title,
    modPath,
  };
}

// ================================================================ the table

/** One figure of a case: the key in the child's JSON line and how to read it. */
interface Metric {
  key: string;
  label: string;
  style: Style;
  higherIsBetter: boolean;
}

function metricsOf(what: Case): Metric[] {
  if (THROUGHPUT.includes(what)) {
    const unit = what === "W4" || what === "W4L" ? "MB/s" : "items/s";
    const style: Style = what === "W4" || what === "W4L" ? "int" : "rate";
    return [
      {
        key: "steady",
        label: `${unit}, steady state ↑`,
        style,
        higherIsBetter: true,
      },
      {
        key: "first",
        label: `${unit}, first pass ↑`,
        style,
        higherIsBetter: true,
      },
    ];
  }
  switch (what) {
    case "W3":
      return [
        {
          key: "speedup",
          label: "speedup t₁/t₂ ↑",
          style: { digits: 2 },
          higherIsBetter: true,
        },
        {
          key: "efficiency2",
          label: "efficiency, 2 workers ↑",
          style: { digits: 2 },
          higherIsBetter: true,
        },
      ];
    case "W6":
      return [
        {
          key: "p50",
          label: "p50 µs ↓",
          style: { digits: 1 },
          higherIsBetter: false,
        },
        {
          key: "p99",
          label: "p99 µs ↓",
          style: { digits: 1 },
          higherIsBetter: false,
        },
      ];
    case "startup":
      return [{
        key: "ms",
        label: "ms to the first result ↓",
        style: { digits: 1 },
        higherIsBetter: false,
      }];
    default:
      return [{
        key: "cpu",
        label: "CPU, fraction of one core ↓",
        style: { digits: 4 },
        higherIsBetter: false,
      }];
  }
}

function describe(what: Case, quick: boolean): string {
  if (what === "startup" || what === "idle") return what;
  const n = sizeOf(what, quick).toLocaleString("en");
  return THROUGHPUT.includes(what)
    ? `${what} (N ${n} × ${PASSES} passes)`
    : `${what} (N ${n})`;
}

/** Figures by case, side name, then pair (undefined: failed). */
type Results = Map<Case, Record<string, (Figures | undefined)[]>>;

function table(results: Results, sides: [Side, Side], o: Options): string {
  const [a, b] = sides;
  const lines = [
    `| workload | figure | A: ${
      a.commit === "." ? "." : a.commit.slice(0, 7)
    } | B: ${
      b.commit === "." ? "." : b.commit.slice(0, 7)
    } | B ÷ A (medians) | B better in |`,
    "|---|---|--:|--:|--:|--:|",
  ];
  for (const what of o.only) {
    const bySide = results.get(what) ?? {};
    metricsOf(what).forEach((m, i) => {
      const values = (side: Side) =>
        (bySide[side.name] ?? []).map((f) => figure(f, m.key));
      const as = values(a);
      const bs = values(b);
      const ma = median(as.filter((x) => x !== undefined));
      const mb = median(bs.filter((x) => x !== undefined));
      let better = 0;
      let pairs = 0;
      for (let p = 0; p < Math.max(as.length, bs.length); p++) {
        const x = as[p];
        const y = bs[p];
        if (x === undefined || y === undefined) continue;
        pairs++;
        if (m.higherIsBetter ? y > x : y < x) better++;
      }
      const of = (xs: (number | undefined)[]) =>
        cell(spread(xs.filter((x) => x !== undefined)), m.style);
      lines.push(
        `| ${i === 0 ? describe(what, o.quick) : what} | ${m.label} | ${
          of(as)
        } | ${of(bs)} | ${
          ma === undefined || mb === undefined || ma === 0
            ? "—"
            : `${(mb / ma).toFixed(3)}×`
        } | ${pairs === 0 ? "—" : `${better}/${pairs}`} |`,
      );
    });
  }
  return lines.join("\n");
}

/** One line of progress: the case's figures, and every pass of a throughput case. */
function summary(f: Figures, what: Case): string {
  const figures = metricsOf(what).map((m) => {
    const x = figure(f, m.key);
    return `${m.key} ${x === undefined ? "?" : format(x, m.style)}`;
  });
  if (!Array.isArray(f.perPass)) return figures.join(", ");
  const style: Style = what === "W4" || what === "W4L" ? "int" : "rate";
  const passes = f.perPass.map((x) => format(x, style)).join(" | ");
  return `${figures.join(", ")} (passes ${passes})`;
}

// ================================================================ main

async function main(o: Options): Promise<void> {
  const abort = new AbortController();
  const tmp = await Deno.makeTempDir({ prefix: "mpipe-ab-" });
  const removeExports = () => {
    try {
      Deno.removeSync(tmp, { recursive: true });
    } catch { /* already gone */ }
  };
  const onSignal = () => {
    if (abort.signal.aborted) {
      removeExports();
      Deno.exit(130);
    }
    console.error(
      "\ninterrupted: stopping the running measurement and removing the exports (again to exit at once)",
    );
    abort.abort();
  };
  const signals = ["SIGINT", "SIGTERM"] as const;
  for (const s of signals) Deno.addSignalListener(s, onSignal);
  try {
    const sides: [Side, Side] = [
      await prepare("A", o.commits[0], join(tmp, "a")),
      await prepare("B", o.commits[1], join(tmp, "b")),
    ];
    const info = await machine();
    const benchAt = await git(["log", "-1", "--format=%h"]);
    const date = timestamp();
    const loadBefore = await loadAverage();
    console.error(`Machine: ${info}`);
    for (const s of sides) console.error(`${s.name}: ${s.title}`);
    if (sides[0].commit === sides[1].commit) {
      console.error(
        "A and B are the same commit: this A/A run shows the noise alone",
      );
    }
    console.error(
      `${o.pairs} pair(s), ${o.quick ? "quick (N / 10)" : "full N"}, cases: ${
        o.only.join(", ")
      }; exports in ${tmp}`,
    );
    const results: Results = new Map();
    const failures: string[] = [];
    const started = performance.now();
    for (let pair = 0; pair < o.pairs && !abort.signal.aborted; pair++) {
      for (const what of o.only) {
        const order = pair % 2 === 0 ? sides : [sides[1], sides[0]];
        for (const side of order) {
          if (abort.signal.aborted) break;
          const t0 = performance.now();
          const outcome = await runChild({
            script: MEASURE,
            args: [
              what,
              "mpipe",
              "--lib",
              side.modPath,
              ...(o.quick ? ["--quick"] : []),
            ],
            permissions: ["--allow-read"],
            timeoutS: o.timeoutS,
            cwd: CHECKOUT,
            signal: abort.signal,
          });
          const s = ((performance.now() - t0) / 1000).toFixed(1);
          const tag = `[pair ${pair + 1}/${o.pairs}] ${what} ${side.name}`;
          if (!results.has(what)) results.set(what, { A: [], B: [] });
          if (outcome.ok) {
            results.get(what)![side.name]![pair] = outcome.figures;
            console.error(`${tag}: ${summary(outcome.figures, what)} (${s} s)`);
          } else if (!abort.signal.aborted) {
            failures.push(`${tag}: ${outcome.error}`);
            console.error(`${tag}: FAILED, skipped: ${outcome.error}`);
          }
        }
      }
    }
    if (abort.signal.aborted) return;
    const total = ((performance.now() - started) / 1000).toFixed(0);
    console.log(
      `## MPipe A/B — medians (min–max) of ${o.pairs} fresh process(es) per cell\n`,
    );
    for (const s of sides) console.log(`${s.name}: ${s.title}  `);
    console.log(`Machine: ${info}  `);
    console.log(`Date: ${date}  `);
    console.log(
      `Mode: ${
        o.quick ? "quick (N / 10)" : "full N (BENCHMARKS.md)"
      }; the bench code of ${CHECKOUT} (HEAD ${benchAt}) with each commit's library; pairs alternate A B, B A, …; throughput workloads run ${PASSES} timed passes of N per process after the warm-up: first pass = pass 1, steady state = median of passes 2–${PASSES}; ↑ higher is better, ↓ lower is better; ${total} s in all; load average ${loadBefore} before, ${await loadAverage()} after.\n`,
    );
    console.log(table(results, sides, o));
    if (failures.length > 0) {
      console.log(`\nFailed measurements (left out of the medians):\n`);
      for (const f of failures) {
        console.log(`- ${f.replaceAll("\n", " ⏎ ").slice(0, 800)}`);
      }
    }
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    if (abort.signal.aborted) {
      console.error("interrupted; the exports were removed");
      Deno.exit(130);
    }
  }
}

if (import.meta.main) await main(parseArgs(Deno.args));
