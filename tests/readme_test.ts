// Every `ts` snippet of the README runs as written: each is copied into a new
// folder whose deno.json maps "@mpipe/mpipe" to this checkout (as the README
// tells a user to), and run there. A snippet whose first line is `// <file>`
// is a file that later snippets use, not a program. (`deno test --doc` runs
// the snippets beside README.md instead, where a module target's relative URL
// finds nothing: those are marked `ts ignore` for it, and run here.)
//
// A snippet that imports "@mpipe/mpipe/jetstream" runs against the test
// server (tests/support/nats.ts) with a worker host, its "127.0.0.1:4222"
// replaced by that server's address.

import assert from "node:assert/strict";
import { runScript } from "./support/run_script.ts";
import { HostProcess, natsUrl, stopSharedServer } from "./support/nats.ts";

const readme = await Deno.readTextFile(
  new URL("../README.md", import.meta.url),
);
const snippets = [...readme.matchAll(/```ts(?: ignore)?\n([\s\S]*?)```/g)].map((
  m,
) => m[1]!);

/** The snippets that are programs, each with the files written before it. */
function programs(): { code: string; files: Map<string, string> }[] {
  const files = new Map<string, string>();
  const found = [];
  for (const code of snippets) {
    const file = /^\/\/ ([\w./-]+\.ts)\n/.exec(code)?.[1];
    if (file !== undefined) files.set(file, code);
    else found.push({ code, files: new Map(files) });
  }
  return found;
}

/** The test server, started before any test (so no test's sanitizers see it start) if a snippet needs it. */
const SERVER =
  programs().some(({ code }) => code.includes('"@mpipe/mpipe/jetstream"'))
    ? await natsUrl()
    : "";

Deno.test("README: there are snippets to run", () => {
  assert.ok(programs().length >= 2);
});

for (const [index, { code, files }] of programs().entries()) {
  const first = code.split("\n").find((line) => line.trim() !== "")!;
  const remote = code.includes('"@mpipe/mpipe/jetstream"');
  Deno.test(`README snippet ${index + 1} runs as written (${first.slice(0, 60)})`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "mpipe-readme-" });
    const url = SERVER;
    const host = remote
      ? await HostProcess.start(url, `readme-${index + 1}`)
      : null;
    try {
      const at = (path: string) => new URL(path, import.meta.url).href;
      await Deno.writeTextFile(
        `${dir}/deno.json`,
        JSON.stringify({
          imports: {
            "@mpipe/mpipe": at("../mod.ts"),
            "@mpipe/mpipe/jetstream": at("../jetstream.ts"),
            "@mpipe/mpipe/dashboard": at("../dashboard.ts"),
          },
        }),
      );
      for (const [name, text] of files) {
        await Deno.writeTextFile(`${dir}/${name}`, text);
      }
      await Deno.writeTextFile(
        `${dir}/main.ts`,
        remote ? code.replaceAll("127.0.0.1:4222", url) : code,
      );
      const { code: exit, stderr } = await runScript(
        new URL(`file://${dir}/main.ts`),
        {
          // The sandbox snippet needs the flag (see the README).
          flags: [
            "--allow-read",
            "--unstable-worker-options",
            // A remote stage's NATS server, or a snippet's own HTTP server.
            ...(remote ? ["--allow-net", "--allow-env=MPIPE_SIGNING_KEY"] : []),
            ...(!remote && (code.includes("Deno.serve(") ||
                code.includes('"@mpipe/mpipe/dashboard"'))
              ? ["--allow-net"]
              : []),
            `--config=${dir}/deno.json`,
          ],
          timeout: remote ? 60_000 : undefined,
        },
      );
      assert.equal(exit, 0, `the snippet exited with ${exit}:\n${stderr}`);
    } finally {
      await host?.stop();
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test({
  name: "README: (the end) the test server stops",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: stopSharedServer,
});
