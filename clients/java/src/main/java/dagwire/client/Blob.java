package dagwire.client;

import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;

/**
 * The content of the toolbox's {@code blob} agent (docs/contracts.md §8), recomputed in Java.
 *
 * <p>The content is the concatenation of the raw 32-byte digests sha256("{seed}:{i}") for i =
 * 0, 1, 2, ... truncated to the requested size. Only its digest is computed here, block by
 * block, so any size runs in constant memory.
 */
final class Blob {
  private Blob() {}

  /**
   * Returns the lowercase hex SHA-256 of the {@code blob} content.
   *
   * @param size content size in bytes, at least 0
   * @param seed the agent's {@code params.seed}, an integer of any size
   * @return 64 lowercase hex digits
   */
  static String sha256Hex(long size, BigInteger seed) {
    if (size < 0) {
      throw new IllegalArgumentException("size must be at least 0, got " + size);
    }
    MessageDigest whole = newSha256();
    MessageDigest block = newSha256();
    String prefix = seed.toString() + ":";
    long produced = 0;
    for (long i = 0; produced < size; i++) {
      byte[] digest = block.digest((prefix + i).getBytes(StandardCharsets.UTF_8));
      int length = (int) Math.min(digest.length, size - produced);
      whole.update(digest, 0, length);
      produced += length;
    }
    return HexFormat.of().formatHex(whole.digest());
  }

  private static MessageDigest newSha256() {
    try {
      return MessageDigest.getInstance("SHA-256");
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("this Java runtime has no SHA-256", e);
    }
  }
}
