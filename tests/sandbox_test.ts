// Sandboxed stages (the `permissions` option), each case in a subprocess:
// with Deno's --unstable-worker-options flag, without it where the library
// can tell (it may read the command line only with -A), and where it cannot.

import assert from "node:assert/strict";
import { runScript } from "./support/run_script.ts";

const main = new URL("./fixtures/sandbox/main.ts", import.meta.url);

/** The JSON lines a run of the fixture printed. */
async function cases(flags: string[], file: string) {
  const { code, stdout, stderr } = await runScript(main, {
    flags,
    args: [file],
  });
  return {
    code,
    stderr,
    lines: stdout.trim() === ""
      ? []
      : stdout.trim().split("\n").map((line) => JSON.parse(line)),
  };
}

Deno.test("Stage permissions: with the flag, a task that reads without leave fails with NotCapable; with read access to its file, it runs (function and module targets, a module that imports another)", async () => {
  const file = await Deno.makeTempFile();
  try {
    await Deno.writeTextFile(file, "hello");
    const { code, stderr, lines } = await cases(
      ["-A", "--unstable-worker-options"],
      file,
    );
    assert.equal(code, 0, stderr);
    assert.deepEqual(
      lines.map((l) => [l.target, l.permissions, l.results ?? l.cause]),
      [
        ["function", "none", "NotCapable"],
        ["function", "read", [5]],
        ["module", "none", "NotCapable"],
        ["module", "read", [5]],
      ],
    );
    for (const line of lines.filter((l) => l.error !== undefined)) {
      assert.equal(line.error, "StageError");
      // The sandbox denied it, not the program: Deno's own hint to run the
      // program with --allow-read would mislead (issue 21, papercut).
      assert.doesNotMatch(line.message, /run again with the --allow-read/);
      assert.match(line.message, /the stage's sandbox denied it/);
      assert.match(line.message, /permissions: \{ read: \[/);
    }
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("Stage permissions: without the flag, where the library can tell (-A), new Pipeline throws a TypeError naming the flag and the config entry, before any worker starts", async () => {
  const { code, stderr, lines } = await cases(["-A"], "/dev/null");
  assert.equal(code, 0, stderr);
  assert.equal(lines.length, 4);
  for (const line of lines) {
    assert.equal(line.error, "TypeError");
    assert.match(line.message, /--unstable-worker-options/);
    assert.match(line.message, /"unstable": \["worker-options"\]/);
  }
});

Deno.test('Stage permissions: the config\'s "unstable": ["worker-options"] is the flag too', async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/deno.json`,
      JSON.stringify({ unstable: ["worker-options"] }),
    );
    await Deno.writeTextFile(`${dir}/hello.txt`, "hi");
    const { code, stderr, lines } = await cases(
      ["-A", `--config=${dir}/deno.json`],
      `${dir}/hello.txt`,
    );
    assert.equal(code, 0, stderr);
    assert.deepEqual(lines[1].results, [2]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Stage permissions: without the flag, where the library cannot tell, it proceeds and Deno ends the process with exit code 70 (as the README says)", async () => {
  const { code, lines } = await cases(
    ["--allow-read", "--no-config"],
    "/dev/null",
  );
  assert.equal(code, 70);
  assert.equal(lines.length, 0);
});

Deno.test("Stage permissions: a sandbox that asks for more than the program has fails with a StageError naming the stage and what to do (new Pipeline throws it, or the reader gets it)", async () => {
  const { code, stdout, stderr } = await runScript(
    new URL("./fixtures/sandbox/escalate.ts", import.meta.url),
    { flags: ["--allow-read", "--unstable-worker-options"] },
  );
  assert.equal(code, 0, stderr);
  const lines = stdout.trim().split("\n").map((line) => JSON.parse(line));
  assert.deepEqual(lines.map((l) => [l.target, l.error, l.cause]), [
    ["function", "StageError", "NotCapable"],
    ["module", "StageError", "NotCapable"],
  ]);
  for (const line of lines) {
    assert.match(line.message, /could not start/);
    assert.match(line.message, /ask for more than the program was granted/);
  }
});

Deno.test("Stage permissions: a bad value throws a TypeError naming the option", async () => {
  const { OrderedStage } = await import("../mod.ts");
  for (const bad of ["all", 1, { read: 1 }, { disk: true }, ["read"]]) {
    assert.throws(
      () =>
        new OrderedStage((x: number) => x, 1, { permissions: bad as never }),
      (error: unknown) =>
        error instanceof TypeError &&
        error.message.includes("'options.permissions"),
    );
  }
});
