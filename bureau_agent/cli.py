"""The `blindmatch` command line.  Only this module imports click and rich."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bureau_agent.ingest import Rejected, Schema, Summary, read_rows
from psi.errors import BlindmatchError
from psi.identifiers import KeyType


@click.group()
@click.version_option(package_name="blindmatch")
def main() -> None:
    """Blindmatch: privacy-preserving hit/no-hit matching between police bureaus."""


# --------------------------------------------------------------------------
# blindmatch check -- validate a bureau file against its schema (issue 3)
# --------------------------------------------------------------------------

# Exit codes of `check`.
EXIT_OK = 0
EXIT_REJECTED = 1  # --strict and at least one row rejected
EXIT_USAGE = 2  # bad schema, unreadable file, bad options (as click's usage errors)

# In --json output, rejections beyond this many are counted, not listed.
_JSON_REJECTIONS_MAX = 10_000


def _summary_table(summary: Summary) -> Table:
    table = Table(title="blindmatch check", title_justify="left", caption=escape(summary.file))
    table.add_column("", style="bold")
    table.add_column("count", justify="right")
    table.add_row("rows", f"{summary.rows:,}")
    table.add_row("accepted", f"{summary.accepted:,}")
    table.add_row("rejected", f"{summary.rejected:,}", style="red" if summary.rejected else None)
    table.add_row("match keys", f"{summary.keys:,}")
    for key_type in KeyType:
        if summary.keys_by_type[key_type]:
            table.add_row(f"  {key_type.value}", f"{summary.keys_by_type[key_type]:,}")
    return table


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--schema",
    "schema_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML schema mapping the file's columns to identifier fields.",
)
@click.option("--strict", is_flag=True, help="Exit 1 if any row is rejected.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def check(file: Path, schema_path: Path, strict: bool, as_json: bool) -> None:
    """Validate FILE (CSV or JSON Lines) without sending anything.

    Prints each rejected row as FILE:LINE: FIELD: REASON and a summary of
    rows, accepted rows, match keys by type and rejected rows.
    """
    summary = Summary(str(file))
    kept: list[dict[str, object]] = []
    try:
        schema = Schema.load(schema_path)
        size = file.stat().st_size if file.exists() else 0
        show_progress = not as_json and sys.stderr.isatty()
        with Progress(
            TextColumn("checking"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=not show_progress,
        ) as progress:
            task = progress.add_task("check", total=size or None)
            rows = read_rows(
                file, schema, on_progress=lambda done: progress.update(task, completed=done)
            )
            for row in rows:
                summary.add(row)
                if not isinstance(row, Rejected):
                    continue
                for rejection in row.rejections:
                    if not as_json:
                        click.echo(str(rejection))
                    elif len(kept) < _JSON_REJECTIONS_MAX:
                        kept.append(
                            {
                                "file": rejection.file,
                                "line": rejection.line,
                                "field": rejection.field,
                                "column": rejection.column,
                                "reason": rejection.reason,
                            }
                        )
    except BlindmatchError as exc:  # SchemaError, and any other refusal
        click.echo(f"{type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    failed = strict and summary.rejected > 0
    if as_json:
        out: dict[str, object] = {
            "summary": summary.as_dict(),
            "strict": strict,
            "ok": not failed,
            "rejections": kept,
            "rejections_not_listed": summary.rejections - len(kept),
        }
        click.echo(json.dumps(out, ensure_ascii=False))
    else:
        Console().print(_summary_table(summary))
        if failed:
            click.echo(
                f"--strict: {summary.rejected:,} row(s) rejected; fix them before enrolling.",
                err=True,
            )
    sys.exit(EXIT_REJECTED if failed else EXIT_OK)


if __name__ == "__main__":
    main()
