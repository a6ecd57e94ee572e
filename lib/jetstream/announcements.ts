/**
 * A remote stage's announcement to the hosts: the stage's spec, signed with
 * the coordinator's Ed25519 key (see `keys.ts`), published on the stream
 * `MPIPE_STAGES` and announced again every `ANNOUNCE_EVERY_MS`.
 *
 * @module
 */

import type { RemoteTarget } from "../stage/cluster.ts";
import {
  decodeMessage,
  type Decoder,
  encodeMessage,
  type Encoder,
  MessageReader,
  MessageWriter,
} from "./messages.ts";

/** The version of these messages; a host refuses a stage of another. */
export const PROTOCOL = 2;

/** How often a live stage is announced again (each time newly signed). */
export const ANNOUNCE_EVERY_MS = 10_000;

/**
 * How long an announcement holds: a host refuses a signed announcement
 * issued longer ago than this (a replay), and stops serving a stage that
 * was not announced again for this long (its coordinator is gone).
 */
export const ANNOUNCE_TTL_MS = 60_000;

/** A remote stage as its bridge announces it to the hosts. */
export interface StageSpec {
  protocol: number;
  /** The run, and the stage's index in it. */
  run: string;
  index: number;
  /** The stage's name, for errors. */
  name: string;
  /** The stage's stream and its two subjects. */
  stream: string;
  inSubject: string;
  outSubject: string;
  /** The prefix of the subjects of its tasks' runs alone (see host/worker_host.ts). */
  aloneSubject: string;
  target: RemoteTarget;
  /** The worker class's constructor arguments. */
  args: unknown[];
  /** How many tasks each host worker runs at once. */
  concurrency: number;
  /** Milliseconds a host may hold a batch without a sign of life. */
  ackWait: number;
  /**
   * How many hosts a task may cost before it is quarantined (fails without
   * running again): the stage's `crashBudget`, else the cluster's
   * `maxAttempts`.
   */
  maxAttempts: number;
  /** How many times a task may be delivered at all (the consumer's `max_deliver`). */
  maxDeliver: number;
  /** Milliseconds a task may run on a host (the stage's `taskTimeout`), or 0 for no limit. */
  taskTimeout: number;
  /** When it was announced (ms since the epoch, the coordinator's clock): a signed announcement older than `ANNOUNCE_TTL_MS` is a replay. */
  issued: number;
}

/**
 * An announcement: the spec's bytes, framed, then their Ed25519 signature
 * by `key`, framed (empty when the coordinator has no signing key).
 */
export async function announcementMessage(
  encoder: Encoder,
  spec: StageSpec,
  key: CryptoKey | null,
): Promise<Uint8Array> {
  const bytes = encodeMessage(encoder, spec);
  const signature = key === null ? new Uint8Array(0) : new Uint8Array(
    await crypto.subtle.sign("Ed25519", key, bytes as Uint8Array<ArrayBuffer>),
  );
  const writer = new MessageWriter(bytes.length + 80);
  writer.frame(bytes);
  writer.frame(signature);
  return writer.take();
}

/**
 * An announcement's spec, and whether one of the `trusted` keys signed it;
 * null if it is not an announcement at all.
 */
export async function readAnnouncement(
  decoder: Decoder,
  message: Uint8Array,
  trusted: readonly CryptoKey[],
): Promise<{ spec: StageSpec; signed: boolean } | null> {
  let bytes: Uint8Array;
  let signature: Uint8Array;
  let spec: StageSpec;
  try {
    const reader = new MessageReader(message);
    bytes = reader.recordBytes();
    signature = reader.recordBytes();
    if (reader.at !== message.length) return null;
    spec = decodeMessage(decoder, bytes) as StageSpec;
    if (typeof spec !== "object" || spec === null) return null;
  } catch {
    return null;
  }
  let signed = false;
  if (signature.length === 64) {
    for (const key of trusted) {
      const ok = await crypto.subtle.verify(
        "Ed25519",
        key,
        signature as Uint8Array<ArrayBuffer>,
        bytes as Uint8Array<ArrayBuffer>,
      );
      if (ok) {
        signed = true;
        break;
      }
    }
  }
  return { spec, signed };
}
