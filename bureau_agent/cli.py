"""The `blindmatch` command line.  Only this module imports click and rich."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="blindmatch")
def main() -> None:
    """Blindmatch: privacy-preserving hit/no-hit matching between police bureaus."""
