// The streams issue's two figures, measured side by side in fresh processes,
// alternating:
//   - W1 (2 ordered stages, x + 1 then x * 2, N 200,000 × 6 passes) fed by
//     `feed(iterable)` and read by `for await` over `readable`, against the
//     awaited-`put` loop read by `for await` over the pipeline;
//   - an I/O-bound stage (each task awaits a 10 ms timer), 1 worker with
//     `concurrency: 32`, against 1 worker without it (N 320).
//
//   - `source.pipeThrough(pipe).pipeTo(sink)` (2 ordered stages, x + 1 then
//     x * 2, 1M tasks) against a chain of two no-op `TransformStream`s doing
//     the same two steps (`--part through`);
//   - the cost per task of each stream-side way in and out (feed of an
//     array, a sync generator, an async generator and a ReadableStream;
//     `writable` through `pipeTo`; `readable` through `pipeTo`) at 10k, 100k
//     and 1M tasks, which should stay flat (`--part flat`).
//
//   deno run --allow-read --allow-run bench/streams.ts [--pairs 5] [--part w1|through|flat|all]
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

/** Items/s of `source.pipeThrough(...).pipeTo(sink)`, through the pipeline or the no-op chain. */
async function through(variant: string, n: number): Promise<number> {
  let sum = 0;
  const sink = new WritableStream<number>({
    write(x) {
      sum += x;
    },
  });
  const source = ReadableStream.from(range(0, n));
  const t0 = performance.now();
  if (variant === "chain") {
    await source
      .pipeThrough(
        new TransformStream<number, number>({
          transform: (x, c) => c.enqueue(x + 1),
        }),
      )
      .pipeThrough(
        new TransformStream<number, number>({
          transform: (x, c) => c.enqueue(x * 2),
        }),
      )
      .pipeTo(sink);
  } else {
    const first = new OrderedStage(w1Increment);
    const pipe = new Pipeline<number, number>(
      first.link(new OrderedStage(w1Double)),
    );
    await source.pipeThrough(pipe).pipeTo(sink);
    await pipe.done;
  }
  const rate = n / ((performance.now() - t0) / 1000);
  if (sum !== n * (n + 1)) throw new Error(`${variant}: sum ${sum}`);
  return rate;
}

/** The stream-side ways in and out whose cost per task must stay flat. */
const FLAT_STYLES = [
  "feed-array",
  "feed-sync-gen",
  "feed-async-gen",
  "feed-stream",
  "writable-pipeTo",
  "readable-pipeTo",
];
const FLAT_SIZES = [10_000, 100_000, 1_000_000];

/**
 * µs per task of one style at `n` tasks (1 ordered stage, x + 1), in a fresh
 * pipeline, timed once its worker runs (one task through it first), so that
 * the start-up does not count.
 */
async function flat(style: string, n: number): Promise<number> {
  const pipe = new Pipeline<number, number>(new OrderedStage(w1Increment));
  async function* asyncRange() {
    for (let i = 0; i < n; i++) yield i;
  }
  await pipe.put(-1);
  if (await pipe.get() !== 0) throw new Error(`${style}: the first task`);
  const t0 = performance.now();
  let fed: Promise<void>;
  if (style === "feed-array") {
    fed = pipe.feed(Array.from({ length: n }, (_, i) => i));
  } else if (style === "feed-sync-gen") fed = pipe.feed(range(0, n));
  else if (style === "feed-async-gen") fed = pipe.feed(asyncRange());
  else if (style === "feed-stream") {
    fed = pipe.feed(ReadableStream.from(range(0, n)));
  } else if (style === "writable-pipeTo") {
    fed = ReadableStream.from(range(0, n)).pipeTo(pipe.writable);
  } else fed = pipe.feed(range(0, n));
  let count = 0;
  if (style === "readable-pipeTo") {
    await pipe.readable.pipeTo(
      new WritableStream({
        write() {
          count++;
        },
      }),
    );
  } else {
    for await (const _ of pipe) count++;
  }
  await fed;
  const us = (performance.now() - t0) * 1000 / n;
  if (count !== n) throw new Error(`${style}: ${count} results of ${n}`);
  await pipe.done;
  return us;
}

async function child(variant: string): Promise<void> {
  if (variant.startsWith("through:")) {
    const [, which, n] = variant.split(":");
    const rate = await through(which!, Number(n));
    console.log(JSON.stringify({ variant, rate }));
    return;
  }
  if (variant.startsWith("flat:")) {
    const [, style, n] = variant.split(":");
    const us = await flat(style!, Number(n));
    console.log(JSON.stringify({ variant, us }));
    return;
  }
  const [input, output] = variant.split("+");
  const figures = output !== undefined
    ? { perPass: await w1(input!, output) }
    : { ms: await io(variant === "io-32" ? 32 : 1) };
  console.log(JSON.stringify({ variant, ...figures }));
}

/** One fresh process per run of `variant`; its JSON line. */
async function runChild(variant: string): Promise<Record<string, number>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", import.meta.filename!, "--one", variant],
    stdout: "piped",
  }).output();
  if (!out.success) throw new Error(`${variant}: the child failed`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/** pipeThrough against the no-op chain, alternating, at 1M tasks. */
async function throughPart(pairs: number): Promise<void> {
  const n = 1_000_000;
  const rates: Record<string, number[]> = { chain: [], pipe: [] };
  for (let i = 0; i < pairs; i++) {
    const order = i % 2 === 0 ? ["chain", "pipe"] : ["pipe", "chain"];
    for (const which of order) {
      const { rate } = await runChild(`through:${which}:${n}`);
      rates[which]!.push(rate!);
      console.error(`[pair ${i + 1}/${pairs}] ${which} ${Math.round(rate!)}/s`);
    }
  }
  const chain = median(rates.chain!)!;
  const pipe = median(rates.pipe!)!;
  const ratios = rates.pipe!.map((r, i) => r / rates.chain![i]!);
  const k = (x: number) => `${(x / 1000).toFixed(0)}k/s`;
  console.log(
    `source.pipeThrough(pipe).pipeTo(sink), 2 ordered stages, 1M tasks: ${
      k(pipe)
    }; two no-op TransformStreams: ${k(chain)}; ratio of medians ${
      (pipe / chain).toFixed(2)
    }× (per pair: ${
      ratios.map((r) => r.toFixed(2)).join(", ")
    }; ${pairs} alternating pairs of fresh processes)`,
  );
}

/** The cost per task of each style at each size, medians of `runs` fresh processes. */
async function flatPart(runs: number): Promise<void> {
  const us: Record<string, number[]> = {};
  for (let r = 0; r < runs; r++) {
    const styles = r % 2 === 0 ? FLAT_STYLES : FLAT_STYLES.slice().reverse();
    for (const style of styles) {
      for (const n of FLAT_SIZES) {
        const line = await runChild(`flat:${style}:${n}`);
        (us[`${style}:${n}`] ??= []).push(line.us!);
      }
    }
    console.error(`[round ${r + 1}/${runs}] done`);
  }
  console.log(
    `µs per task, 1 ordered stage, medians of ${runs} fresh processes each:`,
  );
  console.log(
    `${"style".padEnd(16)} ${
      FLAT_SIZES.map((n) => String(n).padStart(9)).join(" ")
    }  growth 10k→1M`,
  );
  for (const style of FLAT_STYLES) {
    const m = FLAT_SIZES.map((n) => median(us[`${style}:${n}`]!)!);
    console.log(
      `${style.padEnd(16)} ${
        m.map((x) => x.toFixed(2).padStart(9)).join(" ")
      }  ${(m[m.length - 1]! / m[0]!).toFixed(2)}×`,
    );
  }
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
  const pairs = p >= 0 ? Number(Deno.args[p + 1]) : 5;
  const q = Deno.args.indexOf("--part");
  const part = q >= 0 ? Deno.args[q + 1] : "all";
  if (part === "w1" || part === "all") await parent(pairs);
  if (part === "through" || part === "all") await throughPart(pairs);
  if (part === "flat" || part === "all") await flatPart(Math.max(3, pairs));
}
