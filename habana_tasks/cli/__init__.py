"""The command line: arguments checked before any side effect, one service call per command,
the tables it prints, and the exit code.
May import every other room; nothing imports it."""
