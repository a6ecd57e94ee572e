/**
 * The physical limit the W1 figure is compared with: the same two stages
 * (x + 1, then x * 2) as tight loops over bare single-producer rings, with no
 * API and the same three threads as W1: the main thread puts and checks in a
 * blocking loop (only a benchmark may block the main thread), two workers run
 * the stages, and every producer publishes a run of `batch` records per
 * wake-up.
 *
 * `deno run bench/bare_rings.ts [count] [batch]` prints one JSON line:
 * `{ "workload": "bare", "batch": B, "itemsPerSecond": N }`.
 */
import { Bell } from "../lib/shared_memory/bell.ts";
import { Ring } from "../lib/shared_memory/ring.ts";

/** A stage worker's loop: read ints from `input`, apply `op`, write them to `output`. */
function loop(
  data: {
    input: SharedArrayBuffer;
    output: SharedArrayBuffer;
    op: number;
    count: number;
    batch: number;
  },
): void {
  const input = new Ring(data.input);
  const output = new Ring(data.output);
  const bytes = new Uint8Array(4);
  const view = new DataView(bytes.buffer);
  let pending = 0;
  const publish = () => {
    // The data bell of each ring sits in its spare control words (8 and 9).
    if (output.publish()) Bell.ring(output.control, Ring.HEAD + 8);
    pending = 0;
  };
  for (let i = 0; i < data.count; i++) {
    input.beginRead();
    let at = input.peek();
    while (at < 0) {
      publish();
      const counter = Bell.arm(input.control, Ring.HEAD + 8);
      input.beginRead();
      at = input.peek();
      if (at < 0) {
        Atomics.wait(input.control, Ring.HEAD + 8 + Bell.COUNTER, counter);
        input.beginRead();
        at = input.peek();
      }
    }
    const value = input.view.getInt32(at + Ring.FRAME_BYTES, true);
    input.advance();
    input.releaseRead();
    view.setInt32(0, data.op === 1 ? value + 1 : value * 2, true);
    while (output.write(Ring.DATA, 0, bytes, 0, 4) === 0) {
      publish();
      const counter = Bell.arm(output.control, Ring.SPACE_BELL);
      if (output.write(Ring.DATA, 0, bytes, 0, 4) === 4) break;
      Atomics.wait(output.control, Ring.SPACE_BELL + Bell.COUNTER, counter);
    }
    if (++pending >= data.batch) publish();
  }
  publish();
}

const count = Number(Deno.args[0] ?? 2_000_000);
const batch = Number(Deno.args[1] ?? 16);
const source = [
  Bell,
  Ring,
  loop,
  "self.onmessage = (e) => loop(e.data);",
].map(String).join("\n");
const url = URL.createObjectURL(
  new Blob([source], { type: "text/javascript" }),
);
const rings = [0, 1, 2].map(() => Ring.allocate(1 << 20));
const [toFirst, toSecond, toMain] = rings as [
  SharedArrayBuffer,
  SharedArrayBuffer,
  SharedArrayBuffer,
];
const workers = [
  { input: toFirst, output: toSecond, op: 1 },
  { input: toSecond, output: toMain, op: 2 },
].map((role) => {
  const worker = new Worker(url, { type: "module" });
  worker.postMessage({ ...role, count, batch });
  return worker;
});
await new Promise((resolve) => setTimeout(resolve, 200)); // let them start

const input = new Ring(toFirst);
const output = new Ring(toMain);
const record = new Uint8Array(4);
const view = new DataView(record.buffer);
const started = performance.now();
let sent = 0;
let received = 0;
while (received < count) {
  let progressed = false;
  for (let k = 0; k < batch && sent < count; k++) {
    view.setInt32(0, sent, true);
    if (input.write(Ring.DATA, 0, record, 0, 4) !== 4) break;
    sent++;
    progressed = true;
  }
  if (input.publish()) Bell.ring(input.control, Ring.HEAD + 8);
  output.beginRead();
  for (let at = output.peek(); at >= 0; at = output.peek()) {
    const value = output.view.getInt32(at + Ring.FRAME_BYTES, true);
    if (value !== 2 * (received + 1)) {
      throw new Error(`bare rings: item ${received} is ${value}`);
    }
    output.advance();
    received++;
    progressed = true;
  }
  output.releaseRead();
  if (!progressed) {
    const counter = Bell.arm(output.control, Ring.HEAD + 8);
    if (!output.hasData()) {
      Atomics.wait(output.control, Ring.HEAD + 8 + Bell.COUNTER, counter, 1);
    }
  }
}
const seconds = (performance.now() - started) / 1000;
for (const worker of workers) worker.terminate();
console.log(
  JSON.stringify({
    workload: "bare",
    batch,
    itemsPerSecond: Math.round(count / seconds),
  }),
);
