import assert from "node:assert/strict";
import { runScript } from "./support/run_script.ts";

// Each example runs in its own Deno process, as a user would run it, and its
// output is checked: exactly where the program is deterministic, as a sorted
// list where several workers print or results come unordered, and by its
// properties where timing decides the interleaving. The timeout is a hang
// guard, not a speed check.

/** Runs `examples/<name>.ts` with `deno run` and returns its output; fails on a non-zero exit or stderr. */
async function runExample(
  name: string,
  options: { flags?: string[]; args?: string[] } = {},
): Promise<string> {
  const script = new URL(`../examples/${name}.ts`, import.meta.url);
  const { code, stdout, stderr } = await runScript(script, options);
  assert.equal(code, 0, `examples/${name}.ts exited with ${code}:\n${stderr}`);
  assert.equal(stderr, "", `examples/${name}.ts wrote to stderr`);
  return stdout;
}

/** The lines of `text`, each checked to be an integer. */
function numbers(text: string): number[] {
  assert.match(text, /^(-?\d+\n)*$/, "expected one integer per line");
  return text === "" ? [] : text.trimEnd().split("\n").map(Number);
}

/** `values`, one per line, as a program prints them. */
function lines(values: unknown[]): string {
  return values.map((value) => `${value}\n`).join("");
}

function range(n: number, from = 0): number[] {
  return Array.from({ length: n }, (_, i) => from + i);
}

function sorted(values: number[]): number[] {
  return [...values].sort((a, b) => a - b);
}

/** 2, 4, ..., 20: tasks 0 to 9, incremented then doubled. */
const INCREMENTED_DOUBLED = range(10).map((i) => (i + 1) * 2);

// ---- getting started ----

Deno.test("examples/lines.ts streams a file's lines through two stages into a file, in order", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const lines = Array.from(
      { length: 500 },
      (_, i) => "word ".repeat(i % 7).trim(),
    );
    await Deno.writeTextFile(`${dir}/in.txt`, lines.join("\n") + "\n");
    await runExample("lines", {
      flags: ["--allow-read", "--allow-write"],
      args: [`${dir}/in.txt`, `${dir}/out.txt`],
    });
    const expected = lines.map((line, i) =>
      `${String(i % 7).padStart(3)}  ${line}\n`
    ).join("");
    assert.equal(await Deno.readTextFile(`${dir}/out.txt`), expected);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("examples/hello_world.ts prints 0 to 3", async () => {
  assert.equal(await runExample("hello_world"), lines([0, 1, 2, 3]));
});

Deno.test("examples/chain.ts prints each task incremented then doubled, in order", async () => {
  assert.equal(await runExample("chain"), lines(INCREMENTED_DOUBLED));
});

Deno.test("examples/pipeout.ts prints the pipeline's results in order", async () => {
  assert.equal(await runExample("pipeout"), lines(INCREMENTED_DOUBLED));
});

Deno.test("examples/tiny.ts prints the results of three ordered workers per stage in order", async () => {
  assert.equal(await runExample("tiny"), lines(INCREMENTED_DOUBLED));
});

Deno.test("examples/fork.ts prints both branches' values: 1 to 10 and 2 to 20", async () => {
  // Two printer stages print concurrently: the lines interleave.
  const printed = numbers(await runExample("fork"));
  assert.deepEqual(
    sorted(printed),
    sorted([...range(10, 1), ...INCREMENTED_DOUBLED]),
  );
});

// ---- unordered stages, many workers, many tasks ----

Deno.test("examples/unordered.ts prints every result once, in any order", async () => {
  const printed = numbers(await runExample("unordered"));
  assert.deepEqual(sorted(printed), INCREMENTED_DOUBLED);
});

Deno.test("examples/tiny2.ts prints every result of unordered worker classes once, in any order", async () => {
  const printed = numbers(await runExample("tiny2"));
  assert.deepEqual(sorted(printed), INCREMENTED_DOUBLED);
});

Deno.test("examples/count_nullops.ts prints a positive number of loop turns", async () => {
  const printed = numbers(await runExample("count_nullops"));
  assert.equal(printed.length, 1);
  assert.ok(printed[0]! > 0, `expected a positive count, got ${printed[0]}`);
});

Deno.test("examples/multiwork.ts runs its five tasks, prints nothing and exits, with or without an argument", async () => {
  assert.equal(await runExample("multiwork"), "");
  assert.equal(await runExample("multiwork", { args: ["100000"] }), "");
});

Deno.test("examples/clog.ts prints all 10000 results of its one worker in order", async () => {
  assert.equal(await runExample("clog"), lines(range(10_000, 1)));
});

Deno.test("examples/drano.ts drains an inner pipeline from a stage worker: 1 to 10000 in order", async () => {
  // One worker in the inner stage and one reader: the order is kept.
  const printed = await runExample("drano", { flags: ["--allow-read"] });
  assert.equal(printed, lines(range(10_000, 1)));
});

// ---- stage options ----

Deno.test("examples/disable_result.ts reads no result from any of its four pipelines", async () => {
  assert.equal(
    await runExample("disable_result"),
    lines([
      "OrderedStage(yes): 0 results",
      "OrderedStage(yes, 4): 0 results",
      "Stage(Yes, 4), ordered: 0 results",
      "Stage(Yes, 4), unordered: 0 results",
    ]),
  );
});

Deno.test("examples/workparam.ts adds its constructor argument 5 to each task", async () => {
  assert.equal(await runExample("workparam"), lines(range(10, 5)));
});

Deno.test("examples/do_stop_task.ts prints 0 to 9, then null for the stop task", async () => {
  assert.equal(await runExample("do_stop_task"), lines([...range(10), null]));
});

// ---- bottlenecks and backlogs ----

Deno.test("examples/bottleneck1.ts prints all 12 tasks in order from its one worker", async () => {
  assert.equal(await runExample("bottleneck1"), lines(range(12)));
});

Deno.test("examples/bottleneck2.ts prints all 12 tasks from its two workers", async () => {
  // Both workers print as they start a task: neighbours may swap.
  const printed = numbers(await runExample("bottleneck2"));
  assert.deepEqual(sorted(printed), range(12));
});

Deno.test("examples/bottleneck3.ts prints the tasks its filter let through, in order", async () => {
  // Which tasks are dropped depends on timing; the first two always get in
  // (the slow stage holds fewer than maxTasks = 2), and its one worker
  // prints in order.
  const printed = numbers(await runExample("bottleneck3"));
  assert.deepEqual(printed.slice(0, 2), [0, 1]);
  assert.ok(
    printed.every((task, i) => i === 0 || task > printed[i - 1]!),
    `not increasing: ${printed}`,
  );
  assert.ok(printed.every((task) => task >= 0 && task < 12));
});

Deno.test("examples/backlog.ts does every task once and never lets more tasks in than the backlogs allow", async () => {
  const output = await runExample("backlog");
  assert.match(output, /^[i+\-0-9]+\n$/);
  const characters = [...output.trimEnd()];
  const count = (c: string) => characters.filter((x) => x === c).length;
  assert.equal(count("i"), 10, "a put returned for each task");
  assert.equal(count("+"), 10, "stage 1 did each task");
  assert.equal(count("-"), 10, "stage 2 did each task");
  const results = characters.filter((c) => /\d/.test(c)).map(Number);
  assert.deepEqual(sorted(results), range(10), "each result x + 1 - 1 once");
  // Bounds that hold at every point of the output, however fast each part
  // runs: a stage's printed mark comes before its task ends.
  // - Stage 1 (3 workers, maxBacklog 3): a put returns only while fewer than
  //   3 tasks wait, so at most 3 running + 3 waiting tasks have no "+" yet.
  // - Stage 2 (1 worker, maxBacklog 1): of the tasks with a "+" and no "-",
  //   1 runs in stage 2, 1 waits for it, and each of stage 1's 3 workers may
  //   hold one result it cannot put yet.
  let puts = 0, incremented = 0, decremented = 0, printedResults = 0;
  for (const [at, c] of characters.entries()) {
    if (c === "i") puts++;
    else if (c === "+") incremented++;
    else if (c === "-") decremented++;
    else printedResults++;
    const where = `at character ${at} of ${JSON.stringify(output)}`;
    assert.ok(puts - incremented <= 6, `more than 6 tasks in stage 1 ${where}`);
    assert.ok(
      incremented - decremented <= 5,
      `more than 5 results between the stages ${where}`,
    );
    assert.ok(decremented <= incremented, `a "-" before its "+" ${where}`);
    assert.ok(
      printedResults <= decremented,
      `a result before its "-" ${where}`,
    );
  }
});
