// The arena across machines (issue 28): a remote stage on NATS JetStream,
// against a real nats-server and a real worker host (see
// tests/support/nats.ts). A remote hop must copy: the stand-in sends each
// arena buffer's bytes, not its handle, and its reference goes back at once;
// the result comes back as an ordinary array.

import assert from "node:assert/strict";
import { OrderedStage, Pipeline } from "../mod.ts";
import { JetStreamCluster } from "../jetstream.ts";
import {
  clusterOptions,
  natsUrl,
  stopSharedServer,
  timed,
  withHosts,
} from "./support/nats.ts";

const URL_ = await natsUrl();

timed(
  "JetStream: arena buffers cross a remote stage as copies, and their space comes back",
  60_000,
  async () => {
    await using cluster = await JetStreamCluster.connect(clusterOptions(URL_));
    await withHosts(URL_, ["arena-1"], async () => {
      const local = new OrderedStage((bytes: Uint8Array) => {
        bytes[1] = 1;
        return bytes;
      });
      const remote = new OrderedStage(
        (bytes: Uint8Array) => [
          bytes.buffer instanceof SharedArrayBuffer,
          bytes.length,
          bytes[0],
          bytes[1],
        ],
        2,
        { cluster },
      );
      local.link(remote);
      const pipe = new Pipeline<Uint8Array, unknown[]>(local, {
        arenaDebug: true,
      });
      for (let i = 0; i < 5; i++) {
        const bytes = pipe.allocSync(100_000 + i);
        bytes[0] = i;
        pipe.put(bytes);
      }
      pipe.put(null);
      assert.deepEqual(
        await Array.fromAsync(pipe),
        Array.from({ length: 5 }, (_, i) => [false, 100_000 + i, i, 1]),
      );
      await pipe.done;
      assert.equal(pipe.stats().arena.live, 0);
    });
  },
);

Deno.test({
  name: "JetStream arena: (the end) the test server stops",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await stopSharedServer();
  },
});
