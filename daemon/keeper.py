"""Entry point of the daemon's keeper process (``python -m daemon.keeper``)."""

from __future__ import annotations

import argparse
import sys

from config.settings import load_settings
from daemon.process import serve


def main() -> int:
    """Load the same settings the CLI did and run the keeper."""
    parser = argparse.ArgumentParser(prog="rml-keeper")
    parser.add_argument("--config")
    args = parser.parse_args()
    return serve(load_settings(args.config))


if __name__ == "__main__":
    sys.exit(main())
