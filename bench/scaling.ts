// Cost per task as the work grows, for every way in and out of a pipeline, the way users
// write them (issue 22): the pipeline is W1's two ordered stages (x + 1, then x * 2), and
// each style runs N tasks once in a fresh process. The baseline is a chain of two no-op
// `TransformStream`s doing the same two steps.
//
//   deno task bench:scaling [--sizes 10000,100000,1000000] [--runs 3] [--only put-awaited+results,…] [--timeout 600]
//
// A child (`--one <style> <n>`) prints one JSON line; the parent prints, for each style and
// size, the median items/s, µs per task, peak heap, and the growth of µs per task from the
// smallest size.

import { OrderedStage, Pipeline } from "../mod.ts";
import { format, machine, runChild, timestamp } from "./harness.ts";
import { median } from "./stats.ts";
import { w1Double, w1Increment } from "./workloads.ts";

/** Every style: how tasks go in (and how results come out, after the `+`). */
const STYLES = [
  "transform-chain", // the baseline: ReadableStream.from → 2 no-op TransformStreams → sink
  "put-unawaited+results",
  "put-awaited+results",
  "feed-array+results",
  "feed-sync-gen+results",
  "feed-async-gen+results",
  "feed-stream+results",
  "writable+results",
  "feed-array+get",
  "feed-array+for-await",
  "feed-array+readable",
  "pipe-through", // ReadableStream.from → pipeThrough(pipe) → pipeTo(sink)
  "fork-leaf-results",
] as const;
type Style = typeof STYLES[number];

/** Figures of one child run. */
interface Run {
  /** Items per second, from the first put to the last result. */
  rate: number;
  /** Highest `heapUsed` seen, in MiB. */
  heapMiB: number;
}

function* range(n: number): Generator<number> {
  for (let i = 0; i < n; i++) yield i;
}

async function* asyncRange(n: number): AsyncGenerator<number> {
  for (let i = 0; i < n; i++) yield i;
}

let peakHeap = 0;
function sampleHeap(): void {
  peakHeap = Math.max(peakHeap, Deno.memoryUsage().heapUsed);
}

/** A sink that checks every result in order and samples the heap now and then. */
function checker(n: number): { check(value: unknown): void; done(): void } {
  let k = 0;
  return {
    check(value) {
      if (value !== 2 * (k + 1)) throw new Error(`result ${k} was ${value}`);
      if ((++k & 0xffff) === 0) sampleHeap();
    },
    done() {
      if (k !== n) throw new Error(`${k} results of ${n}`);
    },
  };
}

function chain(): Pipeline<number, number> {
  return new Pipeline<number, number>(
    new OrderedStage(w1Increment).link(new OrderedStage(w1Double)),
  );
}

async function one(style: Style, n: number): Promise<Run> {
  const sink = checker(n);
  const t0 = performance.now();
  if (style === "transform-chain") {
    await ReadableStream.from(range(n))
      .pipeThrough(
        new TransformStream({ transform: (x, c) => c.enqueue(x + 1) }),
      )
      .pipeThrough(
        new TransformStream({ transform: (x, c) => c.enqueue(x * 2) }),
      )
      .pipeTo(new WritableStream({ write: (x) => sink.check(x) }));
  } else if (style === "pipe-through") {
    await ReadableStream.from(range(n)).pipeThrough(chain())
      .pipeTo(new WritableStream({ write: (x) => sink.check(x) }));
  } else if (style === "fork-leaf-results") {
    const a = new OrderedStage(w1Increment);
    const b = new OrderedStage(w1Double);
    const c = new OrderedStage(w1Double);
    const pipe = new Pipeline<number, number>(a.link(b).link(c));
    const bSink = checker(n);
    const fed = pipe.feed(range(n));
    await Promise.all([
      (async () => {
        for await (const x of b.results()) bSink.check(x);
      })(),
      (async () => {
        for await (const x of c.results()) sink.check(x);
      })(),
    ]);
    await fed;
    bSink.done();
  } else {
    const [input, output] = style.split("+") as [string, string];
    const pipe = chain();
    let fed: Promise<unknown> = Promise.resolve();
    switch (input) {
      case "put-unawaited":
        for (let i = 0; i < n; i++) pipe.put(i);
        pipe.put(null);
        sampleHeap();
        break;
      case "put-awaited":
        fed = (async () => {
          for (let i = 0; i < n; i++) await pipe.put(i);
          await pipe.put(null);
        })();
        break;
      case "feed-array":
        fed = pipe.feed(Array.from(range(n)));
        break;
      case "feed-sync-gen":
        fed = pipe.feed(range(n));
        break;
      case "feed-async-gen":
        fed = pipe.feed(asyncRange(n));
        break;
      case "feed-stream":
        fed = pipe.feed(ReadableStream.from(range(n)));
        break;
      case "writable":
        fed = ReadableStream.from(range(n)).pipeTo(pipe.writable);
        break;
    }
    if (output === "results") {
      for await (const x of pipe.results()) sink.check(x);
    } else if (output === "get") {
      for (;;) {
        const x = await pipe.get();
        if (x === null) break;
        sink.check(x);
      }
    } else if (output === "for-await") {
      for await (const x of pipe) sink.check(x);
    } else {
      await pipe.readable.pipeTo(
        new WritableStream({ write: (x) => sink.check(x) }),
      );
    }
    await fed;
    await pipe.done;
  }
  const seconds = (performance.now() - t0) / 1000;
  sink.done();
  sampleHeap();
  return { rate: n / seconds, heapMiB: peakHeap / 2 ** 20 };
}

function option(name: string): string | undefined {
  const at = Deno.args.indexOf(name);
  return at < 0 ? undefined : Deno.args[at + 1];
}

if (Deno.args[0] === "--one") {
  const style = Deno.args[1] as Style;
  if (!STYLES.includes(style)) throw new RangeError(`unknown style ${style}`);
  console.log(JSON.stringify(await one(style, Number(Deno.args[2]))));
} else {
  const sizes = (option("--sizes") ?? "10000,100000,1000000").split(",").map(
    Number,
  );
  const runs = Number(option("--runs") ?? 3);
  const only = option("--only")?.split(",");
  const styles = STYLES.filter((s) => only === undefined || only.includes(s));
  console.log(`# bench/scaling.ts ${timestamp()}\n# ${await machine()}`);
  console.log(
    `# ${runs} fresh processes per cell, alternating; medians. µs/task growth is against ${
      sizes[0]
    } tasks.\n`,
  );
  console.log(
    "| style | tasks | items/s | µs/task | peak heap MiB | µs/task growth |",
  );
  console.log("|---|---|---|---|---|---|");
  const base = new Map<string, number>();
  const timeoutS = Number(option("--timeout") ?? 600);
  for (const n of sizes) {
    const rates = new Map<Style, number[]>();
    const heaps = new Map<Style, number[]>();
    // Alternate the styles within each round, so drift on the box hits all alike.
    for (let r = 0; r < runs; r++) {
      for (const style of styles) {
        const outcome = await runChild({
          script: new URL(import.meta.url).pathname,
          args: ["--one", style, String(n)],
          permissions: ["--allow-read"],
          timeoutS,
        });
        if (!outcome.ok) {
          console.log(`| ${style} | ${n} | failed: ${outcome.error} | | | |`);
          continue;
        }
        const run = outcome.figures as unknown as Run;
        rates.set(style, [...rates.get(style) ?? [], run.rate]);
        heaps.set(style, [...heaps.get(style) ?? [], run.heapMiB]);
      }
    }
    for (const style of styles) {
      const rate = median(rates.get(style) ?? []);
      if (rate === undefined) continue;
      const us = 1e6 / rate;
      base.set(`${style}@${n}`, us);
      const first = base.get(`${style}@${sizes[0]}`)!;
      console.log(
        `| ${style} | ${n.toLocaleString("en")} | ${format(rate, "rate")} | ${
          us.toFixed(2)
        } | ${median(heaps.get(style)!)!.toFixed(1)} | ${
          (us / first).toFixed(2)
        }× |`,
      );
    }
  }
}
