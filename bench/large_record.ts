/**
 * Memory on the path of one large record: a `size` MiB Uint8Array (default
 * 256) through two stages, printing the process's peak resident memory
 * (VmHWM, every thread) at the end and resident memory after `done`. Run
 * with `deno run -A bench/large_record.ts [MiB] [kind]`, kind
 * `bytes` (a Uint8Array, the default) or `string`.
 */
import { OrderedStage, Pipeline } from "../mod.ts";

const mib = Number(Deno.args[0] ?? 256);
const kind = Deno.args[1] ?? "bytes";
const status = (field: string) => {
  const line = Deno.readTextFileSync("/proc/self/status").split("\n")
    .find((l) => l.startsWith(field + ":"))!;
  return Number(line.split(/\s+/)[1]) / 1024;
};
const first = new OrderedStage((x: Uint8Array | string) => x);
first.link(new OrderedStage((x: Uint8Array | string) => x.length));
const pipe = new Pipeline<Uint8Array | string, number>(first);
const before = status("VmRSS");
const began = performance.now();
{
  const record = kind === "string"
    ? "x".repeat(mib * 2 ** 20)
    : new Uint8Array(mib * 2 ** 20).fill(7);
  pipe.put(record);
}
pipe.put(null);
const results = await Array.fromAsync(pipe);
await pipe.done;
if (results[0] !== mib * 2 ** 20) throw new Error(`got ${results}`);
const atDone = status("VmRSS");
// The workers' threads end just after `done`.
await new Promise((resolve) => setTimeout(resolve, 1000));
console.log(
  `${mib} MiB ${kind} through two stages in ${
    ((performance.now() - began) / 1000).toFixed(1)
  } s: peak RSS ${status("VmHWM").toFixed(0)} MiB (${
    (status("VmHWM") / mib).toFixed(1)
  }x the record), ${before.toFixed(0)} MiB before, ${
    atDone.toFixed(0)
  } MiB at done, ${status("VmRSS").toFixed(0)} MiB a second later`,
);
