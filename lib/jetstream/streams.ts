/**
 * The JetStream streams and consumers of remote stages: their names, and
 * how they are made.
 *
 * Per remote stage of a run, one work-queue stream `MPIPE_<run>_<stage>`
 * holds two subjects: `mpipe.<run>.<stage>.in`, the batches of tasks that
 * the hosts share through the durable consumer `hosts`, and
 * `mpipe.<run>.<stage>.out`, the hosts' answers, read by the stage's bridge
 * through the durable consumer `bridge`; and `mpipe.<run>.<stage>.alone.<k>`
 * counts the runs of task k alone on a host (no consumer reads them; see
 * `host/worker_host.ts`). On `mpipe.<run>.<stage>.hosts`, outside the
 * stream, each host that serves the stage says so every `HOST_BEAT_MS`,
 * with the batches it holds (see coordinator/host_beats.ts). The stream `MPIPE_STAGES` holds one announcement
 * per live stage, `mpipe.stages.<run>.<stage>`, which every host watches
 * (see `announcements.ts`).
 *
 * @module
 */

import { ANNOUNCE_TTL_MS } from "./announcements.ts";
import { apiCode, type JetStreamManager } from "./connection.ts";

/**
 * How often a host that serves a stage says so (a core NATS message, not
 * stored): a stage whose hosts all fell silent for its cluster's
 * `hostTimeout` fails.
 */
export const HOST_BEAT_MS = 1_000;

/**
 * How long a host that serves a stage may be silent before the stage's
 * bridge takes it as lost and gives its batches to other hosts (see
 * coordinator/host_beats.ts).
 */
export const HOST_SILENT_MS = 3 * HOST_BEAT_MS;

/** The stream of stage announcements, and its subjects' prefix. */
export const STAGES_STREAM = "MPIPE_STAGES";

export const STAGES_SUBJECTS = "mpipe.stages.>";

/** The names of a run's stage `index`. */
export function stageNames(run: string, index: number): {
  stream: string;
  inSubject: string;
  outSubject: string;
  aloneSubject: string;
  hostsSubject: string;
  announcement: string;
} {
  return {
    stream: `MPIPE_${run}_${index}`,
    inSubject: `mpipe.${run}.${index}.in`,
    outSubject: `mpipe.${run}.${index}.out`,
    aloneSubject: `mpipe.${run}.${index}.alone`,
    hostsSubject: `mpipe.${run}.${index}.hosts`,
    announcement: `mpipe.stages.${run}.${index}`,
  };
}

/** Nanoseconds, as JetStream's durations are given, of `ms` milliseconds. */
export function nanosOf(ms: number): number {
  return Math.round(ms * 1_000_000);
}

/** Makes the stream of stage announcements, unless it exists. */
export async function ensureStagesStream(jsm: JetStreamManager): Promise<void> {
  try {
    await jsm.streams.info(STAGES_STREAM);
    return;
  } catch (error) {
    if (apiCode(error) !== 10059) throw error;
  }
  try {
    await jsm.streams.add({
      name: STAGES_STREAM,
      subjects: [STAGES_SUBJECTS],
      max_msgs_per_subject: 1,
      // A stage is announced again while it lives: an announcement of a
      // coordinator that is gone expires.
      max_age: nanosOf(ANNOUNCE_TTL_MS),
    });
  } catch (error) {
    // 10058: another process made it first.
    if (apiCode(error) !== 10058) throw error;
  }
}
