// Type tests: `deno check` (and `deno test`, which checks first) fails when a
// line marked `@ts-expect-error` compiles, or when a line that should compile
// does not. The functions are never called: only their types matter.

import assert from "node:assert/strict";
import {
  OrderedStage,
  OrderedWorker,
  Pipeline,
  Stage,
  UnorderedStage,
} from "../mod.ts";

const increment = (x: number) => x + 1;
const show = (x: number) => `#${x}`;
const length = (x: string) => x.length;

class Doubler extends OrderedWorker<number, number> {
  doTask(task: number) {
    return task * 2;
  }
}

/** The pipeline's task type comes from the root; its result type from the root's results. */
function _inferred() {
  const pipe = new Pipeline(new OrderedStage(increment));
  pipe.put(1);
  // @ts-expect-error the root takes numbers
  pipe.put("one");
  const _result: Promise<number | null> = pipe.get();
  // @ts-expect-error results are numbers
  const _wrong: Promise<string | null> = pipe.get();
  const _class: Promise<number | null> = new Pipeline(new Stage(Doubler)).get();
}

/** Results come from the leaves where links are written in one expression. */
function _chains() {
  const a = new OrderedStage(increment);
  const b = new UnorderedStage(show);
  const c = new OrderedStage(length);
  const chain = new Pipeline(a.link(b.link(c)));
  const _chain: Promise<number | null> = chain.get();
  const d = new OrderedStage(increment);
  const e = new OrderedStage(show);
  const f = new OrderedStage((x: number) => x > 0);
  const fork = new Pipeline(d.link(e).link(f));
  const _fork: Promise<string | boolean | null> = fork.get();
}

/** `link` checks that the next stage takes this stage's results. */
function _links() {
  const a = new OrderedStage(increment);
  a.link(new OrderedStage(show));
  // @ts-expect-error the next stage takes strings, a gives numbers
  a.link(new OrderedStage(length));
  // A stage whose results are typed unknown may link to any stage.
  const loose: Stage<number, unknown> = a;
  loose.link(new OrderedStage(length));
}

/** Explicit type arguments: the task type is checked, the result type is the caller's. */
function _explicit() {
  const root = new OrderedStage(increment);
  root.link(new OrderedStage(show)); // a link the types cannot see
  const _ok = new Pipeline<number, string>(root);
  // @ts-expect-error the root takes numbers, not strings
  new Pipeline<string, string>(root);
  // Tasks typed unknown accept any root.
  const _loose = new Pipeline<unknown, unknown>(root);
}

Deno.test("types: the type checks above hold (this file compiles)", () => {
  assert.equal(typeof _inferred, "function");
  for (const f of [_chains, _links, _explicit]) {
    assert.equal(typeof f, "function");
  }
});
