/**
 * A pipeline between two files, with Web Streams: read a text file as a
 * stream of lines, run each line through two stages (the second one async,
 * several lines at a time in one worker), and write the results to a file
 * with `pipeTo`. Backpressure runs end to end: the file is read only as fast
 * as the results are written.
 *
 * `deno run --allow-read --allow-write examples/lines.ts input.txt output.txt`
 */
import { OrderedStage, Pipeline } from "../mod.ts";

const [input, output] = Deno.args;
if (input === undefined || output === undefined) {
  console.error("usage: examples/lines.ts <input file> <output file>");
  Deno.exit(2);
}

/** Splits a stream of text into lines (without their line ends). */
function lines(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, controller) {
      const parts = (rest + chunk).split(/\r?\n/);
      rest = parts.pop()!;
      for (const line of parts) controller.enqueue(line);
    },
    flush(controller) {
      if (rest !== "") controller.enqueue(rest);
    },
  });
}

// 1. A CPU stage: count each line's words.
const count = new OrderedStage((line: string) => {
  const words = line.split(/\s+/).filter((word) => word !== "").length;
  return { line, words };
}, 2);
// 2. An I/O-like stage: an async task (a timer stands in for a lookup); with
//    concurrency 16 one worker has up to 16 of them in flight, and the stage
//    still puts its results in order.
const label = new OrderedStage(
  async ({ line, words }: { line: string; words: number }) => {
    await new Promise((resolve) => setTimeout(resolve, 5));
    return `${String(words).padStart(3)}  ${line}\n`;
  },
  1,
  { concurrency: 16 },
);
const pipe = new Pipeline(count.link(label));

using source = await Deno.open(input);
using sink = await Deno.open(output, {
  write: true,
  create: true,
  truncate: true,
});
await source.readable
  .pipeThrough(new TextDecoderStream())
  .pipeThrough(lines())
  .pipeThrough(pipe)
  .pipeThrough(new TextEncoderStream())
  .pipeTo(sink.writable);
await pipe.done;
