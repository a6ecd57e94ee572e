/**
 * A multi-threaded stress test of the link layer: producer workers write
 * numbered records through `LinkWriter`s into the rings of one `LinkReader`,
 * consumer workers claim them, and the test checks that every record is
 * delivered exactly once and intact, that each consumer sees each
 * producer's records in order, that stamps are unique, and that the rings of
 * an ordered stage's workers are merged into one global sequence order.
 *
 * Configurations come from seeds: producers 1-4 (up to 7 in joins),
 * consumers 1-4, rings from 4 KiB to 1 MiB, random record sizes including
 * fragments (records larger than a quarter of the ring, some larger than the
 * whole ring), bounded and unbounded backlogs, blocking and main-thread-style
 * (non-blocking) consumers, and links fed by several upstream stages at once.
 * Set STRESS_SEEDS (with --allow-env) to run more of them.
 */

import assert from "node:assert/strict";
import { LinkReader, type ReadMode } from "../lib/shared_memory/link_reader.ts";
import { Ring } from "../lib/shared_memory/ring.ts";
import { readEnv } from "./support/env.ts";
import { Prng } from "./support/prng.ts";
import {
  type ConsumerConfig,
  linkWorkerUrl,
  type ProducerConfig,
  type WorkerReport,
} from "./support/link_worker.ts";

// ---- harness ----

/** Fails a run that takes longer than this (it would otherwise hang). */
const RUN_TIMEOUT_MS = 20_000;

/** How many random configurations to run (STRESS_SEEDS raises it locally). */
function stressSeeds(fallback: number): number {
  const wanted = Number(readEnv("STRESS_SEEDS"));
  return Number.isInteger(wanted) && wanted > 0 ? wanted : fallback;
}

type Done = Extract<WorkerReport, { type: "done" }>;

/**
 * Runs one worker per config and collects their reports. Fails on a worker
 * error or after RUN_TIMEOUT_MS (describing what the rings and the link
 * looked like then), and always terminates every worker and clears the
 * timer.
 */
async function runWorkers(
  configs: (ProducerConfig | ConsumerConfig)[],
  describeState: () => string,
): Promise<Done[]> {
  const url = linkWorkerUrl();
  const workers: Worker[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await new Promise<Done[]>((resolve, reject) => {
      const reports: (Done | undefined)[] = configs.map(() => undefined);
      let pending = configs.length;
      timer = setTimeout(() => {
        const waiting = configs
          .filter((_, i) => reports[i] === undefined)
          .map((config) => `${config.role} ${config.index}`);
        reject(
          new Error(
            `Timed out after ${RUN_TIMEOUT_MS} ms waiting for ${
              waiting.join(", ")
            }; ${describeState()}`,
          ),
        );
      }, RUN_TIMEOUT_MS);
      configs.forEach((config, i) => {
        const worker = new Worker(url, { type: "module" });
        workers.push(worker);
        worker.onmessage = (event: MessageEvent<WorkerReport>) => {
          const report = event.data;
          if (report.type === "error") {
            reject(
              new Error(
                `${report.role} ${report.index} failed: ${report.message}`,
              ),
            );
            return;
          }
          reports[i] = report;
          if (--pending === 0) resolve(reports as Done[]);
        };
        worker.onerror = (event: ErrorEvent) => {
          event.preventDefault();
          reject(
            new Error(
              `${config.role} ${config.index} crashed: ${event.message}`,
            ),
          );
        };
        worker.postMessage(config);
      });
    });
  } finally {
    clearTimeout(timer);
    for (const worker of workers) worker.terminate();
    URL.revokeObjectURL(url);
  }
}

/** The link's control words and each ring's head and tail, for a timeout message. */
function describeLink(
  control: SharedArrayBuffer,
  rings: SharedArrayBuffer[],
): string {
  const words = new Int32Array(control);
  const ringState = rings.map((buffer, i) => {
    const ring = new Int32Array(buffer, 0, Ring.CONTROL_BYTES >> 2);
    return `ring ${i}: head ${ring[Ring.HEAD]} tail ${
      ring[Ring.TAIL]
    } stopped ${ring[Ring.STOPPED]}`;
  });
  return `link: [${[...words].join(", ")}]; ${ringState.join("; ")}`;
}

/** A record size: mostly small, some up to a quarter of the ring, some fragmented. */
function randomSize(
  random: Prng,
  ringBytes: number,
  largeShare: number,
): number {
  const quarter = ringBytes / 4;
  const roll = random.next();
  if (roll < 0.15) return -1; // A plain number.
  if (roll < 1 - largeShare - 0.2) return random.int(0, 64);
  if (roll < 1 - largeShare) return random.int(65, quarter - 64);
  if (ringBytes <= 65536 && random.chance(0.1)) {
    return random.int(ringBytes, 2 * ringBytes); // More than the whole ring.
  }
  return random.int(quarter, Math.min(3 * quarter, 400_000));
}

// ---- configurations ----

/** One upstream stage feeding the link: its workers are the producers. */
interface Group {
  /** How many producers (workers of the upstream stage). */
  producers: number;
  /**
   * An ordered stage: its records carry task sequence numbers and the LAST
   * flag (and END records), and with several producers the link merges them
   * by sequence. An unordered stage's producers write plain DATA records.
   */
  ordered: boolean;
  /** Records per producer (unordered), or tasks dealt among the producers (ordered). */
  count: number;
}

interface StressConfig {
  seed: number;
  groups: Group[];
  consumers: number;
  ringBytes: number;
  /** Share of records larger than a quarter of the ring. */
  largeShare: number;
  claimMax: number;
  spin: number;
  publishEvery: number;
  /** 0 for an unbounded link. */
  maxBacklog: number;
  /** False for a main-thread-style consumer (lone consumers only). */
  blocking: boolean;
}

function describeConfig(c: StressConfig): string {
  const groups = c.groups.map((g) =>
    `${g.producers} ${g.ordered ? "ordered" : "unordered"} x ${g.count}${
      g.ordered ? " tasks" : ""
    }`
  );
  return `seed ${c.seed}: ${
    groups.join(" + ")
  } -> ${c.consumers} consumer(s), ` +
    `ring ${c.ringBytes}, ${Math.round(c.largeShare * 100)}% large, ` +
    `claim ${c.claimMax}, publish every ${c.publishEvery}` +
    (c.maxBacklog > 0 ? `, backlog ${c.maxBacklog}` : "") +
    (c.blocking ? "" : ", non-blocking");
}

const RING_SIZES = [4096, 8192, 16384, 65536, 262144, 1 << 20];

/** Fewer records when they are big, to keep each run to a second or so. */
function randomCount(random: Prng, ringBytes: number, largeShare: number) {
  return ringBytes >= 262144 && largeShare > 0
    ? random.int(50, 200)
    : random.int(200, 3000);
}

/** Shared knobs of a random configuration. */
function randomKnobs(random: Prng, consumers: number) {
  const ringBytes = random.pick(RING_SIZES);
  const largeShare = random.pick([0, 0.02, 0.05, 0.15]);
  return {
    consumers,
    ringBytes,
    largeShare,
    claimMax: random.pick([1, 4, 16, 64]),
    spin: random.pick([0, 50, 2000]),
    publishEvery: random.pick([1, 3, 16, 1000]),
    maxBacklog: random.chance(0.3) ? random.int(1, 32) : 0,
    blocking: consumers > 1 || random.chance(0.7),
  };
}

/** One unordered upstream stage, shared by the consumers. */
function randomUnordered(seed: number): StressConfig {
  const random = new Prng(seed * 7919 + 17);
  const knobs = randomKnobs(random, random.int(1, 4));
  const group = {
    producers: random.int(1, 4),
    ordered: false,
    count: randomCount(random, knobs.ringBytes, knobs.largeShare),
  };
  return { seed, groups: [group], ...knobs };
}

/** One ordered upstream stage with several workers: a merged link. */
function randomOrdered(seed: number): StressConfig {
  const random = new Prng(seed * 104729 + 3);
  const knobs = randomKnobs(random, random.int(1, 3));
  const group = {
    producers: random.int(2, 4),
    ordered: true,
    count: randomCount(random, knobs.ringBytes, knobs.largeShare),
  };
  return { seed, groups: [group], ...knobs };
}

/** A join: several upstream stages, ordered and unordered, into one link. */
function randomJoin(seed: number): StressConfig {
  const random = new Prng(seed * 15485863 + 11);
  const knobs = randomKnobs(random, random.int(1, 3));
  const groups: Group[] = [];
  let producers = 0;
  const stages = random.int(2, 3);
  for (let i = 0; i < stages; i++) {
    const size = random.int(1, Math.min(3, 7 - producers - (stages - i - 1)));
    producers += size;
    groups.push({
      producers: size,
      ordered: random.chance(0.6),
      count: Math.ceil(
        randomCount(random, knobs.ringBytes, knobs.largeShare) / 2,
      ),
    });
  }
  return { seed, groups, ...knobs };
}

const FIXED = {
  claimMax: 16,
  spin: 0,
  publishEvery: 1,
  maxBacklog: 0,
  blocking: true,
  largeShare: 0.15,
};

/** Corner cases first, then random configurations. */
const FIXED_CONFIGS: StressConfig[] = [
  // One to one through the smallest ring, many fragments.
  {
    ...FIXED,
    seed: 1,
    groups: [{ producers: 1, ordered: false, count: 2000 }],
    consumers: 1,
    ringBytes: 4096,
    claimMax: 64,
  },
  // Four by four through the smallest ring, claiming one at a time.
  {
    ...FIXED,
    seed: 2,
    groups: [{ producers: 4, ordered: false, count: 1500 }],
    consumers: 4,
    ringBytes: 4096,
    claimMax: 1,
  },
  // Many producers into one main-thread-style consumer, resuming fragments
  // across claims.
  {
    ...FIXED,
    seed: 3,
    groups: [{ producers: 4, ordered: false, count: 1500 }],
    consumers: 1,
    ringBytes: 8192,
    publishEvery: 7,
    blocking: false,
  },
  // One producer shared by four consumers, with a tight backlog bound.
  {
    ...FIXED,
    seed: 4,
    groups: [{ producers: 1, ordered: false, count: 3000 }],
    consumers: 4,
    ringBytes: 16384,
    largeShare: 0.05,
    claimMax: 4,
    spin: 50,
    publishEvery: 16,
    maxBacklog: 2,
  },
  // Large rings with records larger than a quarter of them.
  {
    ...FIXED,
    seed: 5,
    groups: [{ producers: 3, ordered: false, count: 150 }],
    consumers: 2,
    ringBytes: 1 << 20,
    claimMax: 64,
    spin: 2000,
    publishEvery: 1000,
  },
  // Small records only, published in big batches.
  {
    ...FIXED,
    seed: 6,
    groups: [{ producers: 4, ordered: false, count: 5000 }],
    consumers: 3,
    ringBytes: 65536,
    largeShare: 0,
    claimMax: 64,
    spin: 2000,
    publishEvery: 1000,
  },
];

const FIXED_MERGE_CONFIGS: StressConfig[] = [
  {
    ...FIXED,
    seed: 11,
    groups: [{ producers: 2, ordered: true, count: 3000 }],
    consumers: 1,
    ringBytes: 4096,
    largeShare: 0.05,
  },
  {
    ...FIXED,
    seed: 12,
    groups: [{ producers: 4, ordered: true, count: 3000 }],
    consumers: 1,
    ringBytes: 8192,
    largeShare: 0.1,
    claimMax: 64,
    publishEvery: 3,
  },
  // The main thread reading an ordered stage's results.
  {
    ...FIXED,
    seed: 13,
    groups: [{ producers: 3, ordered: true, count: 2000 }],
    consumers: 1,
    ringBytes: 4096,
    largeShare: 0.1,
    claimMax: 8,
    blocking: false,
  },
  // An ordered stage feeding another one.
  {
    ...FIXED,
    seed: 14,
    groups: [{ producers: 4, ordered: true, count: 3000 }],
    consumers: 3,
    ringBytes: 16384,
    largeShare: 0.05,
    claimMax: 4,
  },
  {
    ...FIXED,
    seed: 15,
    groups: [{ producers: 2, ordered: true, count: 400 }],
    consumers: 2,
    ringBytes: 1 << 20,
    largeShare: 0.1,
    claimMax: 64,
    publishEvery: 16,
  },
  // A backlog bound of one behind the merge: the task the merge waits for
  // must always get in, or nothing moves.
  {
    ...FIXED,
    seed: 16,
    groups: [{ producers: 4, ordered: true, count: 2000 }],
    consumers: 1,
    ringBytes: 8192,
    largeShare: 0.05,
    maxBacklog: 1,
  },
  {
    ...FIXED,
    seed: 17,
    groups: [{ producers: 3, ordered: true, count: 2000 }],
    consumers: 3,
    ringBytes: 4096,
    largeShare: 0.1,
    claimMax: 1,
    maxBacklog: 2,
  },
];

const FIXED_JOIN_CONFIGS: StressConfig[] = [
  // An ordered stage and an unordered one into one consumer.
  {
    ...FIXED,
    seed: 21,
    groups: [
      { producers: 2, ordered: true, count: 1500 },
      { producers: 2, ordered: false, count: 1000 },
    ],
    consumers: 1,
    ringBytes: 8192,
    largeShare: 0.05,
  },
  // Two ordered stages (merged separately) and a one-worker ordered stage
  // (not merged), shared by three consumers, with a backlog bound.
  {
    ...FIXED,
    seed: 22,
    groups: [
      { producers: 2, ordered: true, count: 1000 },
      { producers: 3, ordered: true, count: 1000 },
      { producers: 1, ordered: true, count: 500 },
    ],
    consumers: 3,
    ringBytes: 4096,
    largeShare: 0.1,
    claimMax: 4,
    maxBacklog: 3,
  },
  // The main thread reading several leaf stages.
  {
    ...FIXED,
    seed: 23,
    groups: [
      { producers: 3, ordered: true, count: 1000 },
      { producers: 1, ordered: false, count: 1000 },
    ],
    consumers: 1,
    ringBytes: 4096,
    largeShare: 0.1,
    blocking: false,
  },
];

const RANDOM_CONFIGS = stressSeeds(64);
const CONFIGS = [
  ...FIXED_CONFIGS,
  ...Array.from({ length: RANDOM_CONFIGS }, (_, i) => randomUnordered(100 + i)),
];
const MERGE_CONFIGS = [
  ...FIXED_MERGE_CONFIGS,
  ...Array.from(
    { length: Math.ceil(RANDOM_CONFIGS / 3) },
    (_, i) => randomOrdered(500 + i),
  ),
];
const JOIN_CONFIGS = [
  ...FIXED_JOIN_CONFIGS,
  ...Array.from(
    { length: Math.ceil(RANDOM_CONFIGS / 4) },
    (_, i) => randomJoin(900 + i),
  ),
];

// ---- scripts ----

/** What each producer of a group writes, as ProducerConfig.records quadruples. */
interface GroupScript {
  scripts: Int32Array[];
  /** DATA records in the group (for ordered groups, tags 0..data-1 in global order). */
  data: number;
}

/** An unordered stage: each producer writes DATA records tagged 0..count-1. */
function unorderedScript(
  random: Prng,
  group: Group,
  c: StressConfig,
): GroupScript {
  const scripts = [];
  for (let p = 0; p < group.producers; p++) {
    const records = new Int32Array(group.count * 4);
    for (let i = 0; i < group.count; i++) {
      const size = randomSize(random, c.ringBytes, c.largeShare);
      records.set([Ring.DATA, 0, i, size], i * 4);
    }
    scripts.push(records);
  }
  return { scripts, data: group.count * group.producers };
}

/**
 * An ordered stage: each task goes to one producer (so each gets a disjoint,
 * increasing subset of the sequence numbers); a task puts 0-3 results, the
 * last flagged LAST, or ends with an empty END|LAST record (no result, or
 * after putResult() calls), as the worker runtime writes them. Every DATA
 * record gets a group-wide tag: its place in the order consumers must see.
 */
function orderedScript(
  random: Prng,
  group: Group,
  c: StressConfig,
): GroupScript {
  const scripts: number[][] = Array.from({ length: group.producers }, () => []);
  let tag = 0;
  for (let seq = 0; seq < group.count; seq++) {
    const script = scripts[random.int(0, group.producers - 1)]!;
    const results = random.pick([0, 1, 1, 1, 2, 3]);
    const endsEmpty = results === 0 || random.chance(0.3);
    for (let j = 0; j < results; j++) {
      const last = j === results - 1 && !endsEmpty;
      const kind = last ? Ring.DATA | Ring.LAST : Ring.DATA;
      const size = randomSize(random, c.ringBytes, c.largeShare);
      script.push(kind, seq, tag++, size);
    }
    if (endsEmpty) script.push(Ring.TASK_DONE | Ring.LAST, seq, -1, 0);
  }
  return { scripts: scripts.map((s) => Int32Array.from(s)), data: tag };
}

// ---- a run ----

/** Runs one configuration and checks everything; returns how many records went through. */
async function runStress(c: StressConfig): Promise<number> {
  const random = new Prng(c.seed);
  const groupScripts = c.groups.map((group) =>
    group.ordered
      ? orderedScript(random, group, c)
      : unorderedScript(random, group, c)
  );
  const mode: ReadMode = {
    shared: c.consumers > 1,
    // An ordered stage's rings are merged only when it has several workers.
    groups: c.groups.map((g) => ({
      size: g.producers,
      merge: g.ordered && g.producers > 1,
    })),
    bounded: c.maxBacklog > 0,
    blocking: c.blocking,
  };
  const control = new SharedArrayBuffer(LinkReader.bytes(c.groups.length));
  const scripts = groupScripts.flatMap((g) => g.scripts);
  const groupOf = c.groups.flatMap((g, i) => Array(g.producers).fill(i));
  const producers = scripts.length;
  const rings = scripts.map(() => Ring.allocate(c.ringBytes));
  // Every (producer, tag) written, for the exactly-once check.
  let stride = 1;
  for (const script of scripts) {
    for (let k = 2; k < script.length; k += 4) {
      stride = Math.max(stride, script[k]! + 1);
    }
  }
  const written = new Int32Array(producers * stride);
  scripts.forEach((script, p) => {
    for (let k = 0; k < script.length; k += 4) {
      if ((script[k]! & 0xff) === Ring.DATA) {
        written[p * stride + script[k + 2]!] = 1;
      }
    }
  });
  const total = groupScripts.reduce((sum, g) => sum + g.data, 0);
  const seen = new SharedArrayBuffer(producers * stride * 4);
  const stamps = new SharedArrayBuffer(total * 4);
  const barrier = new SharedArrayBuffer(8);
  const parties = producers + c.consumers;

  const configs: (ProducerConfig | ConsumerConfig)[] = scripts.map((
    records,
    p,
  ) => ({
    role: "producer",
    index: p,
    ring: rings[p]!,
    link: control,
    maxBacklog: c.maxBacklog,
    nextSeqWord: mode.groups[groupOf[p]]!.merge
      ? LinkReader.groupWord(groupOf[p], LinkReader.NEXT_SEQ)
      : -1,
    records,
    publishEvery: c.publishEvery,
    barrier,
    parties,
  }));
  for (let index = 0; index < c.consumers; index++) {
    configs.push({
      role: "consumer",
      index,
      link: control,
      rings,
      mode,
      claimMax: c.claimMax,
      spin: c.spin,
      producers,
      seen,
      stride,
      stamps,
      barrier,
      parties,
    });
  }

  const reports = await runWorkers(
    configs,
    () => describeLink(control, rings),
  );

  // What each consumer found wrong as it went.
  const consumers = reports.filter((r) => r.role === "consumer");
  for (const report of consumers) {
    assert.deepEqual(report.errors, [], `consumer ${report.index}`);
  }
  // Exactly once: every record written was received once, nothing else.
  const counts = new Int32Array(seen);
  const missing: string[] = [];
  const extra: string[] = [];
  counts.forEach((count, i) => {
    const name = `(${Math.floor(i / stride)}, ${i % stride})`;
    if (count < written[i]! && missing.length < 10) missing.push(name);
    if (count > written[i]! && extra.length < 10) {
      extra.push(`${name} x${count}`);
    }
  });
  assert.deepEqual(
    { missing, extra },
    { missing: [], extra: [] },
    "every record is delivered exactly once",
  );
  const received = consumers.reduce((sum, r) => sum + r.records, 0);
  assert.equal(received, total);
  // Stamps: 0..total-1, each once.
  const stampCounts = new Int32Array(stamps);
  const badStamps = [...stampCounts.keys()].filter((i) => stampCounts[i] !== 1);
  assert.deepEqual(badStamps.slice(0, 10), [], "each stamp given once");
  // An ordered stage's records, in stamp order (the order they were taken
  // in, under the lock), are in the group's global order.
  c.groups.forEach((group, g) => {
    if (!group.ordered) return;
    const taken: [number, number][] = [];
    for (const report of consumers) {
      const log = report.log;
      for (let k = 0; k < log.length; k += 3) {
        if (groupOf[log[k]!] === g) taken.push([log[k + 2]!, log[k + 1]!]);
      }
    }
    taken.sort((a, b) => a[0] - b[0]);
    const outOfOrder = taken.findIndex(([, tag], i) => tag !== i);
    assert.equal(
      outOfOrder,
      -1,
      `group ${g}: record ${
        taken[outOfOrder]?.[1]
      } taken at position ${outOfOrder}`,
    );
    assert.equal(taken.length, groupScripts[g]!.data);
  });
  // The link ended cleanly.
  const words = new Int32Array(control);
  assert.equal(
    words[LinkReader.STOPPED_RINGS],
    producers,
    "every stop was seen",
  );
  assert.equal(words[LinkReader.OWN_SEQ], total, "one stamp per record");
  if (c.maxBacklog > 0) {
    assert.equal(words[LinkReader.BACKLOG], 0, "backlog drained");
  }
  mode.groups.forEach((group, g) => {
    if (!group.merge) return;
    const next = words[LinkReader.groupWord(g, LinkReader.NEXT_SEQ)];
    assert.equal(next, c.groups[g]!.count, `group ${g}: every task merged`);
  });
  for (const buffer of rings) {
    const ring = new Int32Array(buffer, 0, Ring.CONTROL_BYTES >> 2);
    assert.equal(ring[Ring.TAIL], ring[Ring.HEAD], "ring fully consumed");
    assert.equal(ring[Ring.STOPPED], 1, "ring marked stopped");
  }
  return total;
}

// ---- the tests ----

let totalRecords = 0;

for (const [n, config] of CONFIGS.entries()) {
  Deno.test(
    `LinkReader/LinkWriter deliver every record exactly once and in order (config ${n}, ${
      describeConfig(config)
    })`,
    async () => {
      totalRecords += await runStress(config);
    },
  );
}

for (const config of MERGE_CONFIGS) {
  Deno.test(
    `LinkReader merges the rings of an ordered stage into global sequence order (${
      describeConfig(config)
    })`,
    async () => {
      totalRecords += await runStress(config);
    },
  );
}

for (const config of JOIN_CONFIGS) {
  Deno.test(
    `LinkReader joins several upstream stages, merging each ordered one (${
      describeConfig(config)
    })`,
    async () => {
      totalRecords += await runStress(config);
    },
  );
}

Deno.test("link stress totals (for the log)", () => {
  console.log(
    `${CONFIGS.length} exactly-once, ${MERGE_CONFIGS.length} merge and ` +
      `${JOIN_CONFIGS.length} join configurations; ` +
      `${totalRecords} data records delivered`,
  );
});
