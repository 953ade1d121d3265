"""``nereid`` command line: ``nereid serve`` (and subcommands added by later stages)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: nereid serve --model-repository DIR [options]   (nereid serve --help for options)")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        from nereid.server.serve import run

        return run(rest)
    if command == "bench":
        from nereid.clients.bench import main as bench

        return bench(rest)
    print(f"nereid: unknown command '{command}'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
