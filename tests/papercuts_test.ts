import assert from "node:assert/strict";
import { OrderedStage, Pipeline, StageError, UnorderedStage } from "../mod.ts";
import { collect, guarded } from "./fixtures/faults/harness.ts";
import { runScript } from "./support/run_script.ts";

// Regression tests for issue 21's items 5 and 8 and its papercuts. A script
// that could hang runs in its own process under runScript's hang guard.

/** Kills a fixture script still running after this long (a hang guard). */
const KILL_MS = 20_000;

/** Runs tests/fixtures/papercuts/<name>.ts and returns its last JSON line. */
async function runFixture(
  name: string,
  flags: string[],
  args: string[] = [],
): Promise<Record<string, unknown>> {
  const script = new URL(`./fixtures/papercuts/${name}.ts`, import.meta.url);
  const { code, signal, stdout, stderr } = await runScript(script, {
    flags: ["--no-prompt", ...flags],
    args,
    timeout: KILL_MS,
  });
  const last = stdout.trimEnd().split("\n").at(-1) ?? "";
  assert.ok(
    code === 0 && signal === null && last.startsWith("{"),
    `the script ${
      signal !== null
        ? `was killed (${signal}) after ${KILL_MS} ms`
        : `exited with code ${code}`
    }; stdout: ${stdout}; stderr: ${stderr.slice(0, 2000)}`,
  );
  return JSON.parse(last);
}

// ---- item 5: a script that is its own module target ----

for (const kind of ["class", "function"]) {
  Deno.test(`I21.5: a script that is its own module target (${kind}) runs to its end`, async () => {
    const report = await runFixture("own_target", ["--allow-read"], [kind]);
    assert.deepEqual(report, { results: [10, 20] });
  });

  Deno.test(`I21.5: a script that is its own module target (${kind}), without --allow-read, fails with a StageError that asks for read access`, async () => {
    const report = await runFixture("own_target", [], [kind]);
    const error = report.error as { name: string; message: string };
    assert.equal(error?.name, "StageError", JSON.stringify(report));
    assert.match(error.message, /cannot load the target/);
    assert.match(error.message, /read access/);
    assert.match(error.message, /own_target\.ts/);
  });
}

Deno.test("I21.5: a script whose Stage is its own module's task function (the issue's program) runs it in order, as OrderedStage would", async () => {
  const report = await runFixture("own_target", ["--allow-read"], [
    "stage-function",
  ]);
  assert.deepEqual(report, { results: [10, 20] });
});

// ---- item 8: an outer variable under onError "skip" ----

const factor = 3;

for (const onError of ["skip", "function"] as const) {
  for (const ordered of [true, false]) {
    const kind = ordered ? "OrderedStage" : "UnorderedStage";
    Deno.test(`I21.8: a function target that uses an outer variable fails with a StageError naming it, under onError ${onError} (${kind})`, async () => {
      const reported: StageError[] = [];
      const Kind = ordered ? OrderedStage : UnorderedStage;
      const pipe = new Pipeline<number, number>(
        new Kind((x: number) => x * factor, 2, {
          name: "scale",
          onError: onError === "skip"
            ? "skip"
            : (error: StageError) => void reported.push(error),
        }),
      );
      await guarded(pipe, async () => {
        for (let i = 0; i < 20; i++) pipe.put(i).catch(() => {});
        pipe.close().catch(() => {});
        const { values, error } = await collect(pipe.results());
        assert.ok(
          error instanceof StageError,
          `expected a StageError, got results ${JSON.stringify(values)}`,
        );
        assert.equal(error.stage, "scale");
        assert.match(error.message, /'factor'/);
        assert.match(error.message, /does not exist in the worker/);
        assert.deepEqual(reported, []);
      });
    });
  }
}

Deno.test("I21.8: a ReferenceError of code the target evaluates from its task (not its own name) is a task error: skipped under onError skip", async () => {
  const pipe = new Pipeline<string, number>(
    new OrderedStage(
      (expression: string) => Function(`return ${expression}`)() as number,
      1,
      { name: "calculator", onError: "skip" },
    ),
  );
  await guarded(pipe, async () => {
    pipe.feed(["1 + 1", "nope + 1", "2 * 3"]).catch(() => {});
    const { values, error } = await collect(pipe.results());
    assert.equal(error, undefined);
    assert.deepEqual(values, [2, 6]);
  });
  assert.equal(pipe.stats().stages[0]!.skipped, 1);
});

// ---- papercut: `self` and `close` in a function target ----

for (
  const [name, target, hint] of [
    ["close", (x: number) => {
      // @ts-ignore: the worker's global, which a shipped target must not use bare.
      if (x > 0) close();
      return x;
    }, "write globalThis.close()"],
    [
      "self",
      // @ts-ignore: the worker's global, which a shipped target must not use bare.
      (x: number) => self === undefined ? x : x,
      "write globalThis.",
    ],
  ] as const
) {
  Deno.test(`Papercut: a function target that uses '${name}' fails with a StageError that says to ${hint}`, async () => {
    const pipe = new Pipeline<number, number>(
      new OrderedStage(target, 1, { name: "bare" }),
    );
    await guarded(pipe, async () => {
      pipe.put(1).catch(() => {});
      pipe.close().catch(() => {});
      const { values, error } = await collect(pipe.results());
      assert.ok(
        error instanceof StageError,
        `expected a StageError, got results ${JSON.stringify(values)}`,
      );
      assert.ok(error.message.includes(`'${name}'`), error.message);
      assert.ok(error.message.includes(hint), error.message);
      assert.doesNotMatch(error.message, /does not exist in the worker/);
    });
  });
}

// ---- papercut: host.ts --help ----

for (const flag of ["--help", "-h"]) {
  Deno.test(`Papercut: host.ts ${flag} prints the usage and each flag, and exits with 0`, async () => {
    const { code, signal, stdout, stderr } = await runScript(
      new URL("../host.ts", import.meta.url),
      { flags: ["--no-prompt"], args: [flag], timeout: KILL_MS },
    );
    assert.equal(signal, null, `killed after ${KILL_MS} ms`);
    assert.equal(code, 0, stderr);
    assert.match(stdout, /^usage: deno run --allow-net=SERVER host\.ts/);
    for (
      const name of [
        "--servers",
        "--workers",
        "--trust",
        "--allow-source",
        "--tls",
      ]
    ) {
      assert.ok(stdout.includes(`\n  ${name} `), `${name} in:\n${stdout}`);
    }
  });
}

Deno.test("I21.5: terminate() while a Stage's module target is still loading ends the pipeline, and nothing keeps the process alive", async () => {
  const report = await runFixture("terminate_while_inspecting", [
    "--allow-read",
  ]);
  assert.deepEqual(report, { ended: true, read: { value: null } });
});
