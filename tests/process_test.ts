import assert from "node:assert/strict";
import { runScript } from "./support/run_script.ts";

// These tests run scripts in their own Deno process: a pipeline must let the
// process exit by itself once the stop request has drained. The timeout is a
// hang guard, not a speed check.

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

// ---- the stop cascade ends the process ----

Deno.test("Pipeline stop cascade lets a 3-stage script exit without terminate() or done", async () => {
  const { code, stdout, stderr } = await runScript(
    new URL("./fixtures/stop_cascade.ts", import.meta.url),
  );
  assert.equal(code, 0, stderr);
  const expected = range(100)
    .flatMap((i) => [(i + 1) * 2, -(i + 1) * 2])
    .sort((a, b) => a - b);
  assert.equal(stdout, `200 results: ${expected.join(",")}\n`);
});

Deno.test("Pipeline stop cascade lets a script exit when its results are never read", async () => {
  const { code, stdout, stderr } = await runScript(
    new URL("./fixtures/unread_results.ts", import.meta.url),
  );
  assert.equal(code, 0, stderr);
  assert.equal(stdout, "stop requested\n");
});

// ---- the cookbook ----

Deno.test("examples/cookbook.ts prints the cookbook's results, the same line every run, and exits", async () => {
  // The cookbook's last stage is a module target (--allow-read) with two
  // unordered workers; the demo sorts their results before printing them.
  const expected = range(10).map((i) => (i + 1) * 2 - 1).join(" ") + "\n";
  for (let run = 0; run < 2; run++) {
    const { code, stdout, stderr } = await runScript(
      new URL("../examples/cookbook.ts", import.meta.url),
      { flags: ["--allow-read"] },
    );
    assert.equal(code, 0, stderr);
    assert.equal(stdout, expected);
  }
});
