/**
 * The codec alone: encode and decode cost of W1-like numbers, W5-like
 * objects, small Maps and 64 KiB `Uint8Array`s, each value its own record as
 * in a ring, decoded from a SharedArrayBuffer as the rings are. Prints the
 * median ns per value over 7 rounds, with a `structuredClone` round trip as
 * the reference a user would otherwise have.
 *
 * Given the path of another codec module (say the previous commit's, saved
 * with `git show HEAD~1:lib/codec.ts > /tmp/old_codec.ts`), it runs that
 * codec and this one in fresh processes, alternating, and prints the median
 * of the processes' figures as a ratio (this / that): the box is noisy, and
 * ratios measured side by side hold better than figures alone.
 *
 * Run with `deno run --allow-read bench/codec.ts`, or
 * `deno run --allow-read --allow-run bench/codec.ts /tmp/old_codec.ts [processes]`
 * (default 5 processes of each).
 */
import { Decoder, Encoder } from "../lib/shared_memory/codec.ts";

interface Codec {
  name: string;
  Encoder: new () => { bytes: Uint8Array; encode(value: unknown): number };
  Decoder: new () => {
    decode(bytes: Uint8Array, view: DataView, start: number): unknown;
  };
}

interface Workload {
  name: string;
  values: unknown[];
  /** Reads something of a decoded value, so that decoding cannot be skipped. */
  touch(value: unknown): number;
}

const [first, second] = Deno.args;
/** Child mode: `--child <codec module>` prints one process's medians as JSON. */
const child = first === "--child" ? second! : undefined;
const other = child === undefined ? first : undefined;
const ROUNDS = 7;

async function load(path: string): Promise<Codec> {
  const module = await import(new URL(path, `file://${Deno.cwd()}/`).href);
  return { name: path, Encoder: module.Encoder, Decoder: module.Decoder };
}

const codec: Codec = child === undefined
  ? { name: "this", Encoder, Decoder }
  : await load(child);

const bytes64k = new Uint8Array(65536).map((_, j) => j & 255);
const workloads: Workload[] = [
  {
    name: "W1 numbers",
    values: Array.from({ length: 200_000 }, (_, i) => i),
    touch: (value) => value as number,
  },
  {
    name: "W5 objects",
    values: Array.from({ length: 50_000 }, (_, i) => ({
      id: i,
      name: "item-" + i,
      tags: ["alpha", "beta", "gamma"],
    })),
    touch: (value) => (value as { id: number }).id,
  },
  // A rarer kind than the workloads', with a walk of its own.
  {
    name: "Maps",
    values: Array.from(
      { length: 50_000 },
      (_, i) => new Map<string, unknown>([["id", i], ["name", "item-" + i]]),
    ),
    touch: (value) => (value as Map<string, number>).get("id")!,
  },
  {
    name: "64 KiB bytes",
    values: Array.from({ length: 500 }, () => bytes64k),
    touch: (value) => (value as Uint8Array)[1]!,
  },
];

/** ns per value to encode every value, each as its own record. */
function timeEncode(codec: Codec, workload: Workload): number {
  const encoder = new codec.Encoder();
  const values = workload.values;
  let sink = 0;
  const began = performance.now();
  for (let i = 0; i < values.length; i++) sink += encoder.encode(values[i]);
  const ns = (performance.now() - began) * 1e6 / values.length;
  if (sink === 0) throw new Error("nothing was encoded");
  return ns;
}

/** The workload's records laid end to end (8-aligned) in shared memory, as in a ring. */
function layOut(
  codec: Codec,
  workload: Workload,
): { bytes: Uint8Array; view: DataView; starts: number[] } {
  const encoder = new codec.Encoder();
  const records = workload.values.map((value) => {
    const length = encoder.encode(value); // first: it may replace the bytes
    return encoder.bytes.slice(0, length);
  });
  const starts: number[] = [];
  let size = 16;
  for (const record of records) {
    starts.push(size);
    size = (size + record.length + 16 + 7) & ~7;
  }
  const buffer = new SharedArrayBuffer(size);
  const bytes = new Uint8Array(buffer);
  records.forEach((record, i) => bytes.set(record, starts[i]!));
  return { bytes, view: new DataView(buffer), starts };
}

/** ns per value to decode every record. */
function timeDecode(
  codec: Codec,
  workload: Workload,
  records: ReturnType<typeof layOut>,
): number {
  const decoder = new codec.Decoder();
  const { bytes, view, starts } = records;
  let sink = 0;
  const began = performance.now();
  for (let i = 0; i < starts.length; i++) {
    sink += workload.touch(decoder.decode(bytes, view, starts[i]!));
  }
  const ns = (performance.now() - began) * 1e6 / starts.length;
  if (Number.isNaN(sink)) throw new Error("a decoded value was wrong");
  return ns;
}

/** ns per value of a structuredClone round trip. */
function timeStructuredClone(workload: Workload): number {
  const values = workload.values;
  let sink = 0;
  const began = performance.now();
  for (let i = 0; i < values.length; i++) {
    sink += workload.touch(structuredClone(values[i]));
  }
  const ns = (performance.now() - began) * 1e6 / values.length;
  if (Number.isNaN(sink)) throw new Error("a clone was wrong");
  return ns;
}

function median(samples: number[]): number {
  const sorted = samples.toSorted((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1
    ? sorted[mid]!
    : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * One process's figures, by workload: median ns per value over the rounds,
 * and the fastest round's (other work on the box only ever adds time, so the
 * fastest round is the steadier figure on a busy box).
 */
interface Figures {
  encode: number[];
  decode: number[];
  fastestEncode: number[];
  fastestDecode: number[];
  clone: number[];
}

function measure(codec: Codec): Figures {
  const layouts = workloads.map((workload) => layOut(codec, workload));
  const samples = workloads.map(() => ({
    encode: [] as number[],
    decode: [] as number[],
    clone: [] as number[],
  }));
  // Round 0 warms every path up and is not counted.
  for (let round = 0; round <= ROUNDS; round++) {
    for (let w = 0; w < workloads.length; w++) {
      const encode = timeEncode(codec, workloads[w]!);
      const decode = timeDecode(codec, workloads[w]!, layouts[w]!);
      const clone = timeStructuredClone(workloads[w]!);
      if (round === 0) continue;
      samples[w]!.encode.push(encode);
      samples[w]!.decode.push(decode);
      samples[w]!.clone.push(clone);
    }
  }
  return {
    encode: samples.map((s) => median(s.encode)),
    decode: samples.map((s) => median(s.decode)),
    fastestEncode: samples.map((s) => Math.min(...s.encode)),
    fastestDecode: samples.map((s) => Math.min(...s.decode)),
    clone: samples.map((s) => median(s.clone)),
  };
}

/** Runs `measure` in a fresh process for the codec at `path`. */
async function measureApart(path: string): Promise<Figures> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      new URL(import.meta.url).pathname,
      "--child",
      path,
    ],
    stderr: "inherit",
  }).output();
  if (!output.success) throw new Error(`bench/codec.ts --child ${path} failed`);
  return JSON.parse(new TextDecoder().decode(output.stdout));
}

const ns = (n: number) => n < 100 ? n.toFixed(1) : n.toFixed(0);

if (child !== undefined) {
  console.log(JSON.stringify(measure(codec)));
} else if (other === undefined) {
  const figures = measure(codec);
  console.log(`Codec, medians of ${ROUNDS} rounds, ns per value`);
  for (let w = 0; w < workloads.length; w++) {
    console.log(
      `${workloads[w]!.name.padEnd(13)} encode ${ns(figures.encode[w]!)} | ` +
        `decode ${ns(figures.decode[w]!)} | ` +
        `structuredClone ${ns(figures.clone[w]!)}`,
    );
  }
} else {
  const processes = Number(Deno.args[1] ?? 5);
  const here =
    new URL("../lib/shared_memory/codec.ts", import.meta.url).pathname;
  const mine: Figures[] = [];
  const theirs: Figures[] = [];
  // Fresh processes, alternating which codec goes first: in one process the
  // second codec's figures drift (its call sites see both codecs' classes).
  for (let i = 0; i < processes; i++) {
    if (i % 2 === 0) {
      mine.push(await measureApart(here));
      theirs.push(await measureApart(other));
    } else {
      theirs.push(await measureApart(other));
      mine.push(await measureApart(here));
    }
  }
  const across = (all: Figures[], key: keyof Figures, w: number) =>
    median(all.map((figures) => figures[key][w]!));
  console.log(
    `Codec, ns per value: this vs ${other} (ratio), the median over ${processes} alternating processes of each one's median (and fastest) of ${ROUNDS} rounds`,
  );
  for (let w = 0; w < workloads.length; w++) {
    const compare = (key: keyof Figures) => {
      const a = across(mine, key, w);
      const b = across(theirs, key, w);
      return `${ns(a)} vs ${ns(b)} (${(a / b).toFixed(3)})`;
    };
    console.log(
      `${workloads[w]!.name.padEnd(13)} encode ${compare("encode")}, ` +
        `fastest ${compare("fastestEncode")} | decode ${compare("decode")}, ` +
        `fastest ${compare("fastestDecode")} | ` +
        `structuredClone ${ns(across(mine, "clone", w))}`,
    );
  }
}
