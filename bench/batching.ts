// How small a task may be: one task per line of a 1M-line JSON file, against
// a single-threaded loop and against batches of lines, in fresh processes,
// alternating. Each variant parses every line and sums one field.
//
//   deno run --allow-read --allow-run bench/batching.ts [--pairs 5] [--lines 1000000]
//
// A child (`--one <variant>`) prints one JSON line; the parent prints medians.

import { OrderedStage, Pipeline } from "../mod.ts";
import { median } from "./stats.ts";

/** The single-threaded loop, one task per line, and batches of lines, on 2 workers. */
const VARIANTS = ["loop", "line", "batch-100", "batch-2000", "text-2000"];
const WORKERS = 2;

/** `count` lines of JSON, about 80 bytes each. */
function makeLines(count: number): string[] {
  return Array.from({ length: count }, (_, i) =>
    JSON.stringify({
      id: i,
      name: `user-${i}`,
      tags: ["a", "b", i % 7 === 0 ? "c" : "d"],
      score: (i % 1000) / 1000,
    }));
}

/** Ms to sum the `score` of every line, as `variant` does it; checks the sum. */
async function run(variant: string, lines: string[]): Promise<number> {
  let sum = 0;
  const t0 = performance.now();
  if (variant === "loop") {
    for (const line of lines) sum += JSON.parse(line).score;
  } else if (variant === "line") {
    const pipe = new Pipeline<string, number>(
      new OrderedStage((line: string) => JSON.parse(line).score, WORKERS),
    );
    pipe.feed(lines);
    for await (const score of pipe) sum += score;
  } else if (variant.startsWith("text-")) {
    // A batch as one string of lines: one record per task, not 2,000.
    const size = Number(variant.slice("text-".length));
    const pipe = new Pipeline<string, number>(
      new OrderedStage((text: string) => {
        let total = 0;
        for (const line of text.split("\n")) total += JSON.parse(line).score;
        return total;
      }, WORKERS),
    );
    pipe.feed(
      (function* () {
        for (const batch of batches(lines, size)) yield batch.join("\n");
      })(),
    );
    for await (const total of pipe) sum += total;
  } else {
    const size = Number(variant.slice("batch-".length));
    const pipe = new Pipeline<string[], number>(
      new OrderedStage((batch: string[]) => {
        let total = 0;
        for (const line of batch) total += JSON.parse(line).score;
        return total;
      }, WORKERS),
    );
    pipe.feed(batches(lines, size));
    for await (const total of pipe) sum += total;
  }
  const ms = performance.now() - t0;
  const expected = lines.length / 1000 * 499.5;
  if (Math.abs(sum - expected) > 1e-6 * expected) {
    throw new Error(`${variant}: sum ${sum}, expected ${expected}`);
  }
  return ms;
}

function* batches(lines: string[], size: number): Iterable<string[]> {
  for (let i = 0; i < lines.length; i += size) yield lines.slice(i, i + size);
}

async function parent(pairs: number, count: number): Promise<void> {
  const runs: Record<string, number[]> = {};
  for (let i = 0; i < pairs; i++) {
    const order = i % 2 === 0 ? VARIANTS.slice() : VARIANTS.slice().reverse();
    for (const variant of order) {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-read",
          import.meta.filename!,
          "--one",
          variant,
          "--lines",
          String(count),
        ],
        stdout: "piped",
      }).output();
      const line = JSON.parse(new TextDecoder().decode(out.stdout));
      (runs[line.variant] ??= []).push(line.ms);
      console.error(`[pair ${i + 1}/${pairs}] ${JSON.stringify(line)}`);
    }
  }
  const loop = median(runs.loop!)!;
  console.log(
    `${
      count.toLocaleString("en")
    } lines, ${WORKERS} workers, medians of ${pairs} fresh processes each`,
  );
  for (const variant of VARIANTS) {
    const ms = median(runs[variant]!)!;
    console.log(
      `${variant.padEnd(11)} ${ms.toFixed(0).padStart(6)} ms  ${
        (ms / loop).toFixed(2)
      }× the loop's time`,
    );
  }
}

const arg = (name: string, fallback: number) => {
  const at = Deno.args.indexOf(name);
  return at >= 0 ? Number(Deno.args[at + 1]) : fallback;
};
const one = Deno.args.indexOf("--one");
if (one >= 0) {
  const variant = Deno.args[one + 1]!;
  const ms = await run(variant, makeLines(arg("--lines", 1_000_000)));
  console.log(JSON.stringify({ variant, ms }));
} else {
  await parent(arg("--pairs", 5), arg("--lines", 1_000_000));
}
