package dagwire.client;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

/**
 * A command's parsed arguments: flags that take a value ({@code --flag VALUE} or {@code
 * --flag=VALUE}, each possibly repeated) and positional arguments ({@code --} ends the flags).
 */
final class Arguments {
  private final String command;
  private final Map<String, List<String>> values = new LinkedHashMap<>();
  private final List<String> positional = new ArrayList<>();
  private boolean help;

  private Arguments(String command) {
    this.command = command;
  }

  /**
   * Parses {@code args} for {@code command}.
   *
   * @param valueFlags the flags this command takes, each with a value
   * @throws CliException (exit 2) for an unknown flag or a flag missing its value
   */
  static Arguments parse(String command, List<String> args, Set<String> valueFlags)
      throws CliException {
    Arguments parsed = new Arguments(command);
    boolean flagsDone = false;
    for (int i = 0; i < args.size(); i++) {
      String arg = args.get(i);
      if (flagsDone || !arg.startsWith("-") || arg.equals("-")) {
        parsed.positional.add(arg);
        continue;
      }
      if (arg.equals("--")) {
        flagsDone = true;
        continue;
      }
      if (arg.equals("-h") || arg.equals("--help")) {
        parsed.help = true;
        continue;
      }
      int equals = arg.indexOf('=');
      String name = equals < 0 ? arg : arg.substring(0, equals);
      if (!valueFlags.contains(name)) {
        throw CliException.badInput(
            command
                + ": unknown option "
                + name
                + " (it takes "
                + String.join(", ", new TreeSet<>(valueFlags))
                + "; see "
                + command
                + " --help)");
      }
      String value;
      if (equals >= 0) {
        value = arg.substring(equals + 1);
      } else if (i + 1 < args.size()) {
        value = args.get(++i);
      } else {
        throw CliException.badInput(command + ": " + name + " needs a value");
      }
      parsed.values.computeIfAbsent(name, k -> new ArrayList<>()).add(value);
    }
    return parsed;
  }

  boolean help() {
    return help;
  }

  List<String> positional() {
    return positional;
  }

  /** Every value given for a repeatable flag, in order. */
  List<String> all(String flag) {
    return values.getOrDefault(flag, List.of());
  }

  /** The flag's value, or null when absent; giving it twice is an error. */
  String one(String flag) throws CliException {
    List<String> given = all(flag);
    if (given.size() > 1) {
      throw CliException.badInput(command + ": " + flag + " given more than once");
    }
    return given.isEmpty() ? null : given.get(0);
  }

  /** The single positional argument, named {@code what} in the error when it is missing. */
  String onlyPositional(String what) throws CliException {
    if (positional.size() != 1) {
      throw CliException.badInput(
          command
              + ": expected exactly one "
              + what
              + ", got "
              + (positional.isEmpty() ? "none" : String.join(" ", positional))
              + " (see "
              + command
              + " --help)");
    }
    return positional.get(0);
  }
}
