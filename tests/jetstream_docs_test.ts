// The JSDoc examples of the JetStream modules need a server (and most a
// worker host), so they are marked `ts ignore` for `deno test --doc`: this
// file runs each of them as written, from a fresh folder whose deno.json maps
// the package's names to this checkout, against the test server (its
// "127.0.0.1:4222" replaced by that server's address), with a host running.

import assert from "node:assert/strict";
import { HostProcess, natsUrl, stopSharedServer } from "./support/nats.ts";
import { runScript } from "./support/run_script.ts";
import { docSymbols } from "./support/deno_doc.ts";

/** The entry points, and every file under lib/jetstream/ (found, so that a moved file is not missed). */
async function jetstreamFiles(): Promise<string[]> {
  const files = ["../jetstream.ts", "../host.ts"];
  const walk = async (dir: string) => {
    const entries = await Array.fromAsync(
      Deno.readDir(new URL(dir, import.meta.url)),
    );
    for (const entry of entries.sort((a, b) => a.name < b.name ? -1 : 1)) {
      if (entry.isDirectory) await walk(`${dir}${entry.name}/`);
      else if (entry.name.endsWith(".ts")) files.push(`${dir}${entry.name}`);
    }
  };
  await walk("../lib/jetstream/");
  return files;
}
const FILES = await jetstreamFiles();

/** The `ts ignore` examples of a module's JSDoc, each with its title. */
async function examples(
  file: string,
): Promise<{ title: string; code: string }[]> {
  const text = await Deno.readTextFile(new URL(file, import.meta.url));
  // The comments' text, without their leading " * ".
  const plain = text.split("\n").map((line) => line.replace(/^\s*\* ?/, ""))
    .join("\n");
  const found = [];
  for (
    const match of plain.matchAll(
      /@example ([^\n]*)\n(?:[^\n`]*\n)*?```ts ignore\n([\s\S]*?)```/g,
    )
  ) {
    found.push({ title: match[1]!.trim(), code: match[2]! });
  }
  return found;
}

const URL_ = await natsUrl();
let total = 0;

for (const file of FILES) {
  for (const { title, code } of await examples(file)) {
    total++;
    Deno.test(`${file.replace("../", "")}: the example "${title}" runs as written`, async () => {
      const dir = await Deno.makeTempDir({ prefix: "mpipe-docs-" });
      const host = await HostProcess.start(URL_, `docs-${total}`);
      try {
        const at = (path: string) => new URL(path, import.meta.url).href;
        await Deno.writeTextFile(
          `${dir}/deno.json`,
          JSON.stringify({
            imports: {
              "@mpipe/mpipe": at("../mod.ts"),
              "@mpipe/mpipe/jetstream": at("../jetstream.ts"),
              "@mpipe/mpipe/host": at("../host.ts"),
            },
          }),
        );
        await Deno.writeTextFile(
          `${dir}/main.ts`,
          code.replaceAll("127.0.0.1:4222", URL_),
        );
        const { code: exit, stderr } = await runScript(
          new URL(`file://${dir}/main.ts`),
          { flags: ["-A", `--config=${dir}/deno.json`], timeout: 60_000 },
        );
        assert.equal(exit, 0, `the example exited with ${exit}:\n${stderr}`);
      } finally {
        await host.stop();
        await Deno.remove(dir, { recursive: true });
      }
    });
  }
}

Deno.test("jetstream.ts exports exactly JetStreamCluster, WorkerHost and their option types, each documented with an example (deno doc)", async () => {
  const jetstream = await import("../jetstream.ts");
  assert.deepEqual(Object.keys(jetstream).sort(), [
    "JetStreamCluster",
    "WorkerHost",
  ]);
  const symbols = await docSymbols(new URL("../jetstream.ts", import.meta.url));
  assert.deepEqual(symbols.map((symbol) => symbol.name).sort(), [
    "ConnectionOptions",
    "JetStreamCluster",
    "JetStreamClusterOptions",
    "WorkerHost",
    "WorkerHostOptions",
  ]);
  for (const symbol of symbols) {
    const docs = symbol.declarations.map((d) => d.jsDoc);
    assert.ok(
      docs.some((d) => (d?.doc ?? "").trim() !== ""),
      `${symbol.name} has no documentation`,
    );
    assert.ok(
      docs.some((d) => d?.tags?.some((tag) => tag.kind === "example")),
      `${symbol.name} has no example`,
    );
  }
});

Deno.test("JetStream docs: every public export's examples were found", () => {
  // jetstream.ts (1), host.ts (2), coordinator/cluster.ts (4), the
  // WorkerHost's files in host/ (3), connection.ts (1).
  assert.ok(total >= 11, `found ${total} examples`);
});

Deno.test({
  name: "JetStream docs: (the end) the test server stops",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: stopSharedServer,
});
