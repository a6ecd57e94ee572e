// Every `ts` snippet of the README runs as written: each is copied into a new
// folder whose deno.json maps "@mpipe/mpipe" to this checkout (as the README
// tells a user to), and run there. A snippet whose first line is `// <file>`
// is a file that later snippets use, not a program. (`deno test --doc` runs
// the snippets beside README.md instead, where a module target's relative URL
// finds nothing: those are marked `ts ignore` for it, and run here.)

import assert from "node:assert/strict";
import { runScript } from "./support/run_script.ts";

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

Deno.test("README: there are snippets to run", () => {
  assert.ok(programs().length >= 2);
});

for (const [index, { code, files }] of programs().entries()) {
  const first = code.split("\n").find((line) => line.trim() !== "")!;
  Deno.test(`README snippet ${index + 1} runs as written (${first.slice(0, 60)})`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "mpipe-readme-" });
    try {
      const mod = new URL("../mod.ts", import.meta.url).href;
      await Deno.writeTextFile(
        `${dir}/deno.json`,
        JSON.stringify({ imports: { "@mpipe/mpipe": mod } }),
      );
      for (const [name, text] of files) {
        await Deno.writeTextFile(`${dir}/${name}`, text);
      }
      await Deno.writeTextFile(`${dir}/main.ts`, code);
      const { code: exit, stderr } = await runScript(
        new URL(`file://${dir}/main.ts`),
        {
          // The sandbox snippet needs the flag (see the README).
          flags: [
            "--allow-read",
            "--unstable-worker-options",
            `--config=${dir}/deno.json`,
          ],
        },
      );
      assert.equal(exit, 0, `the snippet exited with ${exit}:\n${stderr}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
