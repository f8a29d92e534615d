"""`python -m hub --config hub.toml`: run the hub daemon."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hub.server import run
from psi.errors import BlindmatchError


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the hub, and turn a configuration error into a message."""
    parser = argparse.ArgumentParser(prog="python -m hub", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="the hub's TOML configuration")
    args = parser.parse_args(argv)
    try:
        run(args.config)
    except BlindmatchError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
