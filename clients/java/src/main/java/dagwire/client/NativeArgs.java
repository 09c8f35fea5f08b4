package dagwire.client;

import java.io.IOException;
import java.nio.charset.Charset;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Recovers UTF-8 command-line arguments that the JVM decoded with a non-UTF-8 locale.
 *
 * <p>Java decodes {@code main}'s arguments with the platform's native encoding; under a C or
 * POSIX locale that is ASCII, and every non-ASCII character of a {@code --var} value would turn
 * into '?'. On Linux the raw bytes are in /proc/self/cmdline, the program's arguments last.
 */
final class NativeArgs {
  private NativeArgs() {}

  static String[] recover(String[] args) {
    Charset nativeCharset = nativeCharset();
    if (nativeCharset.equals(StandardCharsets.UTF_8) || args.length == 0) {
      return args;
    }
    byte[] raw;
    try {
      raw = Files.readAllBytes(Path.of("/proc/self/cmdline"));
    } catch (IOException | SecurityException | UnsupportedOperationException e) {
      return args;
    }
    List<String> all = new ArrayList<>();
    int start = 0;
    for (int i = 0; i < raw.length; i++) {
      if (raw[i] == 0) {
        all.add(new String(raw, start, i - start, StandardCharsets.UTF_8));
        start = i + 1;
      }
    }
    if (all.size() < args.length) {
      return args;
    }
    String[] recovered = all.subList(all.size() - args.length, all.size()).toArray(new String[0]);
    for (int i = 0; i < args.length; i++) {
      // The launcher puts the program's arguments last; check that the ASCII ones line up.
      if (isAscii(recovered[i]) && !recovered[i].equals(args[i])) {
        return args;
      }
    }
    return recovered;
  }

  private static boolean isAscii(String text) {
    return text.chars().allMatch(c -> c < 0x80);
  }

  private static Charset nativeCharset() {
    String name = System.getProperty("sun.jnu.encoding", "UTF-8");
    try {
      return Charset.forName(name);
    } catch (IllegalArgumentException e) {
      return StandardCharsets.UTF_8;
    }
  }
}
