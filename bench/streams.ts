// The streams issue's two figures, measured side by side in fresh processes,
// alternating:
//   - W1 (2 ordered stages, x + 1 then x * 2, N 200,000 × 6 passes) fed by
//     `feed(iterable)` and read by `for await` over `readable`, against the
//     awaited-`put` loop read by `for await` over the pipeline;
//   - an I/O-bound stage (each task awaits a 10 ms timer), 1 worker with
//     `concurrency: 32`, against 1 worker without it (N 320).
//
//   deno run --allow-read --allow-run bench/streams.ts [--pairs 5]
//
// A child (`--one <variant>`) prints one JSON line; the parent prints medians.

import { OrderedStage, Pipeline } from "../mod.ts";
import { median } from "./stats.ts";
import { w1Double, w1Increment } from "./workloads.ts";

const N = 200_000;
/** W1 as `input+output` (put or feed, results or readable), and the I/O stage. */
const VARIANTS = [
  "put+results",
  "feed+readable",
  "feed+results",
  "put+readable",
  "io-1",
  "io-32",
];
const PASSES = 6;
const IO_TASKS = 320;

/** Items/s of each of 6 passes of W1 through one pipeline, fed and read one way. */
async function w1(input: string, output: string): Promise<number[]> {
  const first = new OrderedStage(w1Increment);
  const pipe = new Pipeline(first.link(new OrderedStage(w1Double)));
  const reader = output === "readable"
    ? pipe.readable.values()
    : pipe.results();
  const pass = async (n: number, from: number) => {
    const fed = input === "feed"
      ? pipe.feed(range(from, n), { close: false })
      : (async () => {
        for (let i = from; i < from + n; i++) await pipe.put(i);
      })();
    for (let k = from; k < from + n; k++) {
      const { value } = await reader.next();
      if (value !== 2 * (k + 1)) throw new Error(`W1: ${k} gave ${value}`);
    }
    await fed;
  };
  await pass(1000, 0);
  const rates: number[] = [];
  for (let p = 0; p < PASSES; p++) {
    const t0 = performance.now();
    await pass(N, 1000 + p * N);
    rates.push(N / ((performance.now() - t0) / 1000));
  }
  await pipe.close();
  await reader.return?.();
  pipe.terminate();
  await pipe.done;
  return rates;
}

function* range(from: number, n: number): Iterable<number> {
  for (let i = from; i < from + n; i++) yield i;
}

/** Ms for IO_TASKS tasks that each await a 10 ms timer, in 1 worker. */
async function io(concurrency: number): Promise<number> {
  const pipe = new Pipeline(
    new OrderedStage(
      async (x: number) => {
        await new Promise((resolve) => setTimeout(resolve, 10));
        return x;
      },
      1,
      { concurrency },
    ),
  );
  const t0 = performance.now();
  const fed = pipe.feed(range(0, IO_TASKS));
  let count = 0;
  for await (const _ of pipe) count++;
  await fed;
  if (count !== IO_TASKS) throw new Error(`io: ${count} results`);
  return performance.now() - t0;
}

async function child(variant: string): Promise<void> {
  const [input, output] = variant.split("+");
  const figures = output !== undefined
    ? { perPass: await w1(input!, output) }
    : { ms: await io(variant === "io-32" ? 32 : 1) };
  console.log(JSON.stringify({ variant, ...figures }));
}

async function parent(pairs: number): Promise<void> {
  const runs: Record<string, { perPass?: number[]; ms?: number }[]> = {};
  for (let i = 0; i < pairs; i++) {
    const order = VARIANTS.slice();
    if (i % 2 === 1) order.reverse();
    for (const variant of order) {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--allow-read", import.meta.filename!, "--one", variant],
        stdout: "piped",
      }).output();
      const line = JSON.parse(new TextDecoder().decode(out.stdout));
      (runs[variant] ??= []).push(line);
      console.error(`[pair ${i + 1}/${pairs}] ${JSON.stringify(line)}`);
    }
  }
  const steady = (v: string) =>
    median(runs[v]!.map((r) => median(r.perPass!.slice(1))!))!;
  const first = (v: string) => median(runs[v]!.map((r) => r.perPass![0]!))!;
  const ms = (v: string) => median(runs[v]!.map((r) => r.ms!))!;
  const m = (x: number) => `${(x / 1e6).toFixed(2)}M/s`;
  console.log(`medians of ${pairs} alternating fresh processes each`);
  const base = "put+results";
  for (const v of VARIANTS.filter((v) => v.includes("+"))) {
    console.log(
      `W1 ${v.padEnd(14)} steady ${m(steady(v))} (${
        (steady(v) / steady(base)).toFixed(2)
      }×), first pass ${m(first(v))} (${(first(v) / first(base)).toFixed(2)}×)`,
    );
  }
  console.log(
    `I/O stage, ${IO_TASKS} tasks of a 10 ms timer, 1 worker: ${
      ms("io-1").toFixed(0)
    } ms; with concurrency 32: ${ms("io-32").toFixed(0)} ms (${
      (ms("io-1") / ms("io-32")).toFixed(1)
    }× faster)`,
  );
}

const at = Deno.args.indexOf("--one");
if (at >= 0) await child(Deno.args[at + 1]!);
else {
  const p = Deno.args.indexOf("--pairs");
  await parent(p >= 0 ? Number(Deno.args[p + 1]) : 5);
}
