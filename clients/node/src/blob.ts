/**
 * The `blob` agent's content digest, from its definition (docs/contracts.md §8): the concatenation of the
 * raw 32-byte digests sha256("{seed}:{i}") for i = 0, 1, 2 ... truncated to `size` bytes.
 */

import { createHash } from "node:crypto";

const DIGEST_BYTES = 32;
/** Blocks are hashed into a buffer of this size before feeding the outer hash. */
const BATCH_BYTES = 64 * 1024;

/**
 * Lowercase hex sha256 of the `blob` content of `size` bytes for `seed`, computed in a
 * streaming way: memory stays at one 64 KiB buffer whatever the size.
 *
 * @param size content length in bytes (a non-negative safe integer)
 * @param seed the seed as a base-10 integer string (it may exceed 2^53, so it stays text)
 */
export function blobSha256(size: number, seed: string): string {
  const outer = createHash("sha256");
  const batch = Buffer.allocUnsafe(BATCH_BYTES);
  let filled = 0;
  let produced = 0;
  for (let i = 0; produced < size; i++) {
    const block = createHash("sha256").update(`${seed}:${i}`, "utf8").digest();
    const take = Math.min(DIGEST_BYTES, size - produced);
    block.copy(batch, filled, 0, take);
    filled += take;
    produced += take;
    if (filled > BATCH_BYTES - DIGEST_BYTES) {
      outer.update(batch.subarray(0, filled));
      filled = 0;
    }
  }
  outer.update(batch.subarray(0, filled));
  return outer.digest("hex");
}
