/** The symbols `deno doc --json` shows for a module, for the export tests. */

/** One documented symbol: its name, and the JSDoc of each declaration. */
export interface DocSymbol {
  name: string;
  declarations: {
    jsDoc?: { doc?: string; tags?: { kind: string }[] };
  }[];
}

/** Runs `deno doc --json` on `module`; throws with its stderr if it fails. */
export async function docSymbols(module: URL): Promise<DocSymbol[]> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--json", module.href],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (output.code !== 0) {
    throw new Error(new TextDecoder().decode(output.stderr));
  }
  const doc = JSON.parse(new TextDecoder().decode(output.stdout)) as {
    nodes: Record<string, { symbols: DocSymbol[] }>;
  };
  return Object.values(doc.nodes).flatMap((node) => node.symbols);
}
