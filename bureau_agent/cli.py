"""The `blindmatch` command line.  Only this module imports click and rich."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import grpc
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from blindmatch.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from bureau_agent import ceremony, daemon
from bureau_agent import pki as pki_mod
from bureau_agent.config import AgentConfig
from bureau_agent.core_demo import run_core_demo
from bureau_agent.ingest import Rejected, Schema, Summary, read_rows
from bureau_agent.keytypes import key_type_from_proto
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


# --------------------------------------------------------------------------
# Shared plumbing of the federation commands
# --------------------------------------------------------------------------

EXIT_FAILED = 1
# Deadline of the CLI's unary calls to its agent, which bounds its own calls to
# custodians and the hub; streams (enroll, match, follow) run until done.
CLI_TIMEOUT = 120.0


def _fail(exc: BaseException) -> NoReturn:
    """Print `ErrorName: what to do` and exit non-zero."""
    if isinstance(exc, grpc.RpcError):
        code = exc.code()
        details = exc.details()
        name = code.name if code is not None else "RpcError"
        if code is grpc.StatusCode.UNAVAILABLE and "agent.sock" in str(details):
            details = f"{details} (is `blindmatch agent serve` running?)"
        click.echo(f"{name}: {details}", err=True)
    else:
        click.echo(f"{type(exc).__name__}: {exc}", err=True)
    sys.exit(EXIT_FAILED)


F = TypeVar("F", bound=Callable[..., Any])


def _handles_errors(fn: F) -> F:
    """Turn Blindmatch and gRPC errors into one readable line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (BlindmatchError, grpc.RpcError) as exc:
            _fail(exc)

    return wrapper  # type: ignore[return-value]


config_option = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BLINDMATCH_CONFIG",
    required=True,
    help="The bureau agent's configuration (TOML); or set BLINDMATCH_CONFIG.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")


def _agent(config_path: Path) -> agent_pb2_grpc.AgentStub:
    config = AgentConfig.load(config_path)
    channel = grpc.insecure_channel(f"unix:{config.socket_path}")
    return agent_pb2_grpc.AgentStub(channel)


def _strength(value: int) -> str:
    return "exact" if value == common_pb2.STRENGTH_EXACT else "candidate"


def _key_type(value: int) -> str:
    return key_type_from_proto(value).value


def _match_json(m: common_pb2.Match) -> dict[str, object]:
    return {
        "match_id": m.match_id,
        "matched_on": _key_type(m.key_type),
        "strength": _strength(m.strength),
        "category": m.category if m.HasField("category") else None,
        "owner": m.owner if m.HasField("owner") else None,
    }


def _progress(as_json: bool, label: str) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=as_json or not sys.stderr.isatty(),
    )


# --------------------------------------------------------------------------
# blindmatch pki / keys -- the federation's CA, directory and key ceremony
# --------------------------------------------------------------------------


@main.group()
def pki() -> None:
    """Federation CA, certificates and the signed directory."""


@pki.command("init")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="The federation's name (in every certificate).")
@_handles_errors
def pki_init(folder: Path, name: str) -> None:
    """Create a federation CA and an empty signed directory in FOLDER."""
    pki_mod.init_federation(folder, name)
    click.echo(f"federation {name!r}: CA and directory in {folder}")


@pki.command("issue")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--hub", "is_hub", is_flag=True, help="Issue the hub's certificate.")
@click.option("--bureau", help="Issue a bureau's certificate and keys (ISO 3166 alpha-3 code).")
@click.option("--host", "hosts", multiple=True, help="DNS name or IP in the certificate (repeat).")
@click.option("--address", default="", help="host:port to publish in the directory.")
@click.option("--days", default=365, show_default=True, help="Certificate validity.")
@_handles_errors
def pki_issue(
    folder: Path, is_hub: bool, bureau: str | None, hosts: tuple[str, ...], address: str, days: int
) -> None:
    """Issue a certificate (and long-term keys) for the hub or a bureau."""
    if is_hub == (bureau is not None):
        raise click.UsageError("give exactly one of --hub or --bureau CODE")
    names = hosts or pki_mod.DEFAULT_HOSTS
    if bureau is None:
        out = pki_mod.issue_hub(folder, names, address=address, valid_days=days)
    else:
        out = pki_mod.issue_bureau(folder, bureau, names, address=address, valid_days=days)
    click.echo(f"issued: {out}")


@pki.command("set-address")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.argument("who")
@click.argument("address")
@_handles_errors
def pki_set_address(folder: Path, who: str, address: str) -> None:
    """Publish ADDRESS (host:port) for WHO (a bureau code, or "hub") and re-sign."""
    d = pki_mod.set_address(folder, who, address)
    click.echo(f"directory version {d.version}: {who} at {address}")


@pki.command("show")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@json_option
@_handles_errors
def pki_show(folder: Path, as_json: bool) -> None:
    """Verify and print the federation directory."""
    d = pki_mod.load_directory(folder / "directory.json", folder / "ca" / "ca.crt")
    if as_json:
        click.echo(json.dumps(d.to_json(), indent=2))
        return
    table = Table(title=f"{d.federation} directory, version {d.version} (signature verified)")
    for column in ("bureau", "address", "signing key", "custodian of"):
        table.add_column(column)
    for code, entry in sorted(d.bureaus.items()):
        roles = ", ".join(
            f"epoch {e.epoch} #{e.custodians[code]}"
            for e in d.epochs.values()
            if code in e.custodians
        )
        table.add_row(code, entry.address or "-", entry.signing_key.hex()[:16] + "…", roles or "-")
    Console().print(table)
    click.echo(f"hub: {d.hub_address or '-'}")


@main.group()
def keys() -> None:
    """Key epochs: the threshold key ceremony."""


@keys.command("ceremony")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--threshold", "threshold_t", type=int, required=True, help="t: shares needed.")
@click.option("--custodians", required=True, help="Comma-separated bureau codes, e.g. FRA,DEU,BRA.")
@click.option("--epoch", type=int, required=True, help="The new epoch's number.")
@_handles_errors
def keys_ceremony(folder: Path, threshold_t: int, custodians: str, epoch: int) -> None:
    """Deal a new epoch key t-of-n to custodian bureaus (share files + directory)."""
    codes = [c.strip() for c in custodians.split(",") if c.strip()]
    entry = ceremony.run_ceremony(folder, epoch=epoch, threshold_t=threshold_t, custodians=codes)
    for code, index in entry.custodians.items():
        click.echo(f"{code}: share {index} -> {ceremony.share_path(folder, epoch, code)}")
    click.echo(f"epoch {epoch}: {threshold_t}-of-{len(codes)}, commitments in the directory")


# --------------------------------------------------------------------------
# blindmatch hub / agent -- the daemons
# --------------------------------------------------------------------------


@main.group("hub")
def hub_group() -> None:
    """The central hub."""


@hub_group.command("serve")
@click.option("--config", "-c", "config_path", required=True, type=click.Path(path_type=Path))
@_handles_errors
def hub_serve(config_path: Path) -> None:
    """Run the hub (mutual TLS, SQLite or PostgreSQL store) until SIGTERM."""
    from hub import server as hub_server

    hub_server.run(config_path)


@hub_group.command("migrate")
@click.option("--config", "-c", "config_path", required=True, type=click.Path(path_type=Path))
@_handles_errors
def hub_migrate(config_path: Path) -> None:
    """Create or upgrade the hub's database schema (SQLite or PostgreSQL), then exit.

    Safe to run again, and while other hub processes serve the same database."""
    from hub import server as hub_server

    click.echo(str(hub_server.migrate(config_path)))


@main.group("agent")
def agent_group() -> None:
    """The bureau agent daemon."""


@agent_group.command("serve")
@config_option
@_handles_errors
def agent_serve(config_path: Path) -> None:
    """Run the bureau agent (custodian role if configured) until SIGTERM."""
    daemon.run(AgentConfig.load(config_path))


# --------------------------------------------------------------------------
# blindmatch enroll / remove / query / match / hits / datasets / status
# --------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dataset", required=True, help="Dataset name (unique within your bureau).")
@click.option("--schema", "schema_path", required=True, type=click.Path(path_type=Path))
@click.option("--category", default="", help="e.g. watch-list, stolen-passports.")
@click.option("--replace", is_flag=True, help="Replace the dataset's current version atomically.")
@click.option("--reveal-owner", is_flag=True, help="Tell matching bureaus who owns a hit.")
@click.option("--reveal-category", is_flag=True, help="Tell matching bureaus the category.")
@click.option("--linkable", is_flag=True, help="Take part in standing matches.")
@click.option("--strict", is_flag=True, help="Send nothing if any row is rejected.")
@config_option
@json_option
@_handles_errors
def enroll(
    file: Path,
    dataset: str,
    schema_path: Path,
    category: str,
    replace: bool,
    reveal_owner: bool,
    reveal_category: bool,
    linkable: bool,
    strict: bool,
    config_path: Path,
    as_json: bool,
) -> None:
    """Enroll FILE as a version of DATASET: normalize, tag with the custodians, send to the hub."""
    request = agent_pb2.LocalEnrollRequest(
        path=str(file.resolve()),
        schema_path=str(schema_path.resolve()),
        dataset=dataset,
        category=category,
        replace=replace,
        strict=strict,
        policy=common_pb2.DatasetPolicy(
            reveal_owner=reveal_owner, reveal_category=reveal_category, linkable=linkable
        ),
    )
    rejections: list[dict[str, object]] = []
    summary: agent_pb2.EnrollSummary | None = None
    with _progress(as_json, "enrolling") as progress:
        task = progress.add_task("enroll", total=None, detail="")
        for event in _agent(config_path).Enroll(request):
            kind = event.WhichOneof("event")
            if kind == "progress":
                p = event.progress
                progress.update(
                    task,
                    completed=p.bytes_read,
                    total=p.bytes_total or None,
                    detail=f"{p.rows:,} rows, {p.tags:,} tags",
                )
            elif kind == "rejection":
                r = event.rejection
                rejections.append(
                    {"file": r.file, "line": r.line, "field": r.field, "reason": r.reason}
                )
                if not as_json:
                    progress.console.print(escape(f"{r.file}:{r.line}: {r.field}: {r.reason}"))
            elif kind == "summary":
                summary = event.summary
    if summary is None:
        raise BlindmatchError("the agent ended the enrollment without a summary")
    result = {
        "dataset": summary.dataset,
        "version": summary.version,
        "rows": summary.rows,
        "accepted": summary.accepted,
        "rejected": summary.rejected,
        "keys": summary.keys,
        "keys_by_type": dict(summary.keys_by_type),
        "seconds": round(summary.seconds, 3),
        "records_per_second": round(summary.accepted / summary.seconds, 1)
        if summary.seconds
        else None,
        "new_standing_matches": summary.new_notices,
        "rejections": rejections,
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"enrolled {summary.dataset} version {summary.version}: {summary.accepted:,} records, "
        f"{summary.keys:,} keys, {summary.rejected:,} rejected, {summary.seconds:.1f} s"
        + (f", {summary.new_notices} new standing match(es)" if summary.new_notices else "")
    )


@main.command()
@click.argument("handles", nargs=-1)
@click.option("--dataset", required=True)
@click.option("--record-id", "record_ids", multiple=True, help="Remove by record id (repeat).")
@config_option
@json_option
@_handles_errors
def remove(
    handles: tuple[str, ...],
    dataset: str,
    record_ids: tuple[str, ...],
    config_path: Path,
    as_json: bool,
) -> None:
    """Make records of DATASET stop matching at once (by HANDLE or --record-id)."""
    if not handles and not record_ids:
        raise click.UsageError("name at least one HANDLE or --record-id")
    reply = _agent(config_path).Remove(
        agent_pb2.LocalRemoveRequest(dataset=dataset, handles=handles, record_ids=record_ids),
        timeout=CLI_TIMEOUT,
    )
    out = {
        "removed_keys": reply.removed_keys,
        "version": reply.version,
        "unknown": list(reply.unknown),
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"removed {reply.removed_keys} key(s); {dataset} is now version {reply.version}")
    for unknown in reply.unknown:
        click.echo(f"not found: {unknown}", err=True)


def _document(value: str, option: str) -> tuple[str, str]:
    issuer, sep, number = value.partition(":")
    if not sep or not issuer or not number:
        raise click.BadParameter("write ISSUER:NUMBER, e.g. FRA:12AB34567", param_hint=option)
    return issuer, number


@main.command()
@click.option("--passport", help="ISSUER:NUMBER, e.g. FRA:12AB34567.")
@click.option("--idcard", help="ISSUER:NUMBER.")
@click.option("--person", help="Full name (any script); needs --dob.")
@click.option("--dob", help="Date of birth (1980-02-03, 03.02.1980, 1980 ...).")
@click.option("--phone", help="Phone number (E.164, or national with the agent's region).")
@click.option("--email")
@click.option("--iban")
@click.option("--vin")
@click.option("--include-own", is_flag=True, help="Also report hits in your own datasets.")
@config_option
@json_option
@_handles_errors
def query(
    passport: str | None,
    idcard: str | None,
    person: str | None,
    dob: str | None,
    phone: str | None,
    email: str | None,
    iban: str | None,
    vin: str | None,
    include_own: bool,
    config_path: Path,
    as_json: bool,
) -> None:
    """Ask every other bureau's datasets whether these identifiers match (hit / no hit)."""
    ids = agent_pb2.Identifiers(
        name=person or "",
        dob=dob or "",
        phone=phone or "",
        email=email or "",
        iban=iban or "",
        vin=vin or "",
    )
    if passport:
        ids.passport_issuer, ids.passport = _document(passport, "--passport")
    if idcard:
        ids.idcard_issuer, ids.idcard = _document(idcard, "--idcard")
    if not any((passport, idcard, person, phone, email, iban, vin)):
        raise click.UsageError("give at least one identifier (--passport, --person ... )")
    reply = _agent(config_path).Query(
        agent_pb2.LocalQueryRequest(identifiers=ids, include_own=include_own), timeout=CLI_TIMEOUT
    )
    matches = [_match_json(m) for m in reply.matches]
    if as_json:
        click.echo(json.dumps({"matches": matches}))
        return
    if not matches:
        click.echo(f"no hit ({', '.join(reply.keys_queried)} checked)")
        return
    table = Table(title=f"{len(matches)} hit(s)")
    for column in ("match id", "matched on", "strength", "category", "owner"):
        table.add_column(column)
    for m in matches:
        table.add_row(
            str(m["match_id"]),
            str(m["matched_on"]),
            str(m["strength"]),
            str(m["category"] or "-"),
            str(m["owner"] or "-"),
        )
    Console().print(table)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--schema", "schema_path", required=True, type=click.Path(path_type=Path))
@click.option("--include-own", is_flag=True, help="Also report hits in your own datasets.")
@config_option
@json_option
@_handles_errors
def match(
    file: Path, schema_path: Path, include_own: bool, config_path: Path, as_json: bool
) -> None:
    """Bulk match FILE (e.g. a passenger list) against every other bureau's datasets."""
    request = agent_pb2.LocalMatchRequest(
        path=str(file.resolve()), schema_path=str(schema_path.resolve()), include_own=include_own
    )
    hits: list[dict[str, object]] = []
    rejections: list[dict[str, object]] = []
    summary: agent_pb2.EnrollSummary | None = None
    with _progress(as_json, "matching") as progress:
        task = progress.add_task("match", total=None, detail="")
        for event in _agent(config_path).MatchFile(request):
            kind = event.WhichOneof("event")
            if kind == "progress":
                p = event.progress
                progress.update(
                    task,
                    completed=p.bytes_read,
                    total=p.bytes_total or None,
                    detail=f"{p.rows:,} rows, {len(hits):,} hits",
                )
            elif kind == "hit":
                hits.append(
                    {
                        "record_id": event.hit.record_id,
                        "line": event.hit.line,
                        **_match_json(event.hit.match),
                    }
                )
            elif kind == "rejection":
                r = event.rejection
                rejections.append(
                    {"file": r.file, "line": r.line, "field": r.field, "reason": r.reason}
                )
                if not as_json:
                    progress.console.print(escape(f"{r.file}:{r.line}: {r.field}: {r.reason}"))
            elif kind == "summary":
                summary = event.summary
    if summary is None:
        raise BlindmatchError("the agent ended the match without a summary")
    if as_json:
        click.echo(
            json.dumps(
                {
                    "matches": hits,
                    "rows": summary.rows,
                    "accepted": summary.accepted,
                    "rejected": summary.rejected,
                    "keys": summary.keys,
                    "seconds": round(summary.seconds, 3),
                    "rejections": rejections,
                }
            )
        )
        return
    table = Table(title=f"{len(hits)} hit(s) in {summary.rows:,} rows ({summary.seconds:.1f} s)")
    for column in ("line", "record", "match id", "matched on", "strength", "category", "owner"):
        table.add_column(column)
    for h in hits:
        table.add_row(
            str(h["line"]),
            str(h["record_id"]),
            str(h["match_id"]),
            str(h["matched_on"]),
            str(h["strength"]),
            str(h["category"] or "-"),
            str(h["owner"] or "-"),
        )
    Console().print(table)


def _notice_json(n: common_pb2.Notice) -> dict[str, object]:
    return {
        "sequence": n.sequence,
        "match_id": n.match_id,
        "dataset": n.dataset,
        "handle": n.handle.hex(),
        "matched_on": _key_type(n.key_type),
        "strength": _strength(n.strength),
        "other_owner": n.other_owner if n.HasField("other_owner") else None,
        "other_category": n.other_category if n.HasField("other_category") else None,
        "created_unix_ms": n.created_unix_ms,
    }


@main.command()
@click.option("--follow", "-f", is_flag=True, help="Keep watching for new standing matches.")
@click.option("--all", "show_all", is_flag=True, help="From the first notice, not the last read.")
@config_option
@json_option
@_handles_errors
def hits(follow: bool, show_all: bool, config_path: Path, as_json: bool) -> None:
    """Standing matches: new links between your linkable datasets and other bureaus'."""
    stream = _agent(config_path).Hits(agent_pb2.LocalHitsRequest(follow=follow, all=show_all))
    count = 0
    try:
        for notice in stream:
            count += 1
            n = _notice_json(notice)
            if as_json:
                click.echo(json.dumps(n))
            else:
                who = n["other_owner"] or "another bureau"
                what = f" ({n['other_category']})" if n["other_category"] else ""
                click.echo(
                    f"#{n['sequence']} {n['dataset']}: {n['strength']} match on {n['matched_on']} "
                    f"with {who}{what}, match {n['match_id']}, your handle {n['handle']}"
                )
    except KeyboardInterrupt:
        pass
    if count == 0 and not as_json:
        click.echo("no new standing matches")


@main.command()
@config_option
@json_option
@_handles_errors
def datasets(config_path: Path, as_json: bool) -> None:
    """Your datasets at the hub: version, epoch, tags, policy."""
    reply = _agent(config_path).ListDatasets(
        agent_pb2.LocalListDatasetsRequest(), timeout=CLI_TIMEOUT
    )
    rows = [
        {
            "name": d.name,
            "epoch": d.epoch,
            "version": d.version,
            "tags": d.tag_count,
            "category": d.category,
            "reveal_owner": d.policy.reveal_owner,
            "reveal_category": d.policy.reveal_category,
            "linkable": d.policy.linkable,
        }
        for d in reply.datasets
    ]
    if as_json:
        click.echo(json.dumps({"datasets": rows}))
        return
    table = Table(title="datasets")
    for column in ("name", "epoch", "version", "tags", "category", "policy"):
        table.add_column(column)
    for r in rows:
        policy = (
            ", ".join(k for k in ("reveal_owner", "reveal_category", "linkable") if r[k])
            or "nothing revealed"
        )
        table.add_row(
            str(r["name"]),
            str(r["epoch"]),
            str(r["version"]),
            f"{r['tags']:,}",
            str(r["category"] or "-"),
            policy,
        )
    Console().print(table)


@main.command()
@config_option
@json_option
@_handles_errors
def status(config_path: Path, as_json: bool) -> None:
    """The agent's epoch, custodian role, and whether the hub and custodians answer."""
    s = _agent(config_path).GetStatus(agent_pb2.LocalStatusRequest(), timeout=CLI_TIMEOUT)
    out = {
        "bureau": s.bureau,
        "epoch": s.epoch,
        "custodian": s.custodian,
        "share_index": s.share_index,
        "hub": s.hub,
        "hub_reachable": s.hub_reachable,
        "custodians": [
            {
                "bureau": c.bureau,
                "share_index": c.share_index,
                "address": c.address,
                "reachable": c.reachable,
                "error": c.error or None,
            }
            for c in s.custodians
        ],
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(
        f"bureau {s.bureau}, epoch {s.epoch}"
        + (f", custodian #{s.share_index}" if s.custodian else "")
    )
    click.echo(f"hub {s.hub or '-'}: {'reachable' if s.hub_reachable else 'NOT reachable'}")
    for c in s.custodians:
        state = "ok" if c.reachable else f"NOT reachable ({c.error})"
        click.echo(f"  custodian {c.bureau} #{c.share_index} at {c.address or '-'}: {state}")


# --------------------------------------------------------------------------
# blindmatch disclosure / audit
# --------------------------------------------------------------------------


def _disclosure_json(d: agent_pb2.LocalDisclosure) -> dict[str, object]:
    return {
        "request_id": d.request_id,
        "direction": d.direction,
        "status": d.status,
        "requester": d.requester,
        "owner": d.owner or None,
        "match_id": d.match_id,
        "matched_on": d.matched_on or None,
        "purpose": d.purpose,
        "legal_basis": d.legal_basis,
        "record": dict(d.record),
        "record_id": d.record_id or None,
        "dataset": d.dataset or None,
        "reason": d.reason or None,
        "verified": d.verified,
        "record_removed": d.record_removed,
        "created_unix_ms": d.created_unix_ms,
        "expires_unix_ms": d.expires_unix_ms,
    }


def _print_disclosure(d: agent_pb2.LocalDisclosure) -> None:
    j = _disclosure_json(d)
    arrow = f"{j['requester']} -> {j['owner'] or 'owner hidden'}"
    click.echo(f"{j['request_id']}  {j['direction']}  {j['status']}  {arrow}")
    click.echo(
        f"  match {j['match_id']}" + (f", matched on {j['matched_on']}" if j["matched_on"] else "")
    )
    click.echo(f"  purpose: {j['purpose']}")
    click.echo(f"  legal basis: {j['legal_basis']}")
    if j["record_id"]:
        click.echo(f"  your record: {j['dataset']}/{j['record_id']}")
    if j["record_removed"]:
        click.echo("  the record was removed since the match")
    for name, value in sorted(d.record.items()):
        click.echo(f"    {name}: {value}")
    if j["reason"]:
        click.echo(f"  reason: {j['reason']}")
    if not j["verified"]:
        click.echo("  WARNING: signatures did not verify; do not rely on this case", err=True)


@main.group()
def disclosure() -> None:
    """Consent-gated disclosure of the record behind a match."""


@disclosure.command("request")
@click.argument("match_id")
@click.option("--purpose", required=True, help="Why the record is needed (case reference).")
@click.option("--legal-basis", required=True, help="The law or agreement that allows the request.")
@click.option("--days", default=30, show_default=True, help="Days until the request expires.")
@config_option
@json_option
@_handles_errors
def disclosure_request(
    match_id: str, purpose: str, legal_basis: str, days: int, config_path: Path, as_json: bool
) -> None:
    """Ask the owner of MATCH_ID's record to disclose it (signed, routed by the hub)."""
    d = _agent(config_path).RequestDisclosure(
        agent_pb2.LocalDisclosureRequest(
            match_id=match_id, purpose=purpose, legal_basis=legal_basis, ttl_days=days
        ),
        timeout=CLI_TIMEOUT,
    )
    if as_json:
        click.echo(json.dumps(_disclosure_json(d)))
    else:
        _print_disclosure(d)


@disclosure.command("list")
@click.option("--incoming", is_flag=True, help="Requests addressed to your bureau.")
@click.option("--outgoing", is_flag=True, help="Requests your bureau made.")
@click.option("--follow", "-f", is_flag=True, help="Keep watching; print new cases as they arrive.")
@config_option
@json_option
@_handles_errors
def disclosure_list(
    incoming: bool, outgoing: bool, follow: bool, config_path: Path, as_json: bool
) -> None:
    """List disclosure cases (both directions unless one is chosen)."""
    stream = _agent(config_path).ListDisclosures(
        agent_pb2.LocalListDisclosuresRequest(incoming=incoming, outgoing=outgoing, follow=follow)
    )
    try:
        for d in stream:
            if as_json:
                click.echo(json.dumps(_disclosure_json(d)))
            else:
                _print_disclosure(d)
    except KeyboardInterrupt:
        pass


@disclosure.command("show")
@click.argument("request_id")
@config_option
@json_option
@_handles_errors
def disclosure_show(request_id: str, config_path: Path, as_json: bool) -> None:
    """One case: the owner sees the local record; the requester the opened record."""
    d = _agent(config_path).ShowDisclosure(
        agent_pb2.LocalShowDisclosureRequest(request_id=request_id), timeout=CLI_TIMEOUT
    )
    if as_json:
        click.echo(json.dumps(_disclosure_json(d)))
    else:
        _print_disclosure(d)


@disclosure.command("approve")
@click.argument("request_id")
@click.option("--fields", default="", help="Comma-separated fields to disclose (default: all).")
@config_option
@json_option
@_handles_errors
def disclosure_approve(request_id: str, fields: str, config_path: Path, as_json: bool) -> None:
    """Approve REQUEST_ID: seal the chosen fields to the requester and sign the decision."""
    names = [f.strip() for f in fields.split(",") if f.strip()]
    d = _agent(config_path).ApproveDisclosure(
        agent_pb2.LocalApproveRequest(request_id=request_id, fields=names), timeout=CLI_TIMEOUT
    )
    if as_json:
        click.echo(json.dumps(_disclosure_json(d)))
    else:
        _print_disclosure(d)


@disclosure.command("deny")
@click.argument("request_id")
@click.option("--reason", required=True, help="Told to the requester.")
@config_option
@json_option
@_handles_errors
def disclosure_deny(request_id: str, reason: str, config_path: Path, as_json: bool) -> None:
    """Deny REQUEST_ID with a reason (signed)."""
    d = _agent(config_path).DenyDisclosure(
        agent_pb2.LocalDenyRequest(request_id=request_id, reason=reason), timeout=CLI_TIMEOUT
    )
    if as_json:
        click.echo(json.dumps(_disclosure_json(d)))
    else:
        _print_disclosure(d)


@main.group()
def audit() -> None:
    """The hub's tamper-evident audit log."""


@audit.command("verify")
@config_option
@json_option
@_handles_errors
def audit_verify(config_path: Path, as_json: bool) -> None:
    """Check the hub's signed log: consistency, your own events, other bureaus' view."""
    r = _agent(config_path).VerifyAudit(agent_pb2.LocalVerifyAuditRequest(), timeout=CLI_TIMEOUT)
    out = {
        "ok": r.ok,
        "tree_size": r.tree_size,
        "root": r.root.hex(),
        "head_timestamp_ms": r.head_timestamp_ms,
        "previous_size": r.previous_size,
        "consistent_with_previous": r.consistent_with_previous,
        "own_events": r.own_events,
        "own_events_verified": r.own_events_verified,
        "witnesses": list(r.witnesses),
        "problems": list(r.problems),
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(f"signed tree head: {r.tree_size} entries, root {r.root.hex()[:16]}…")
        click.echo(
            f"consistent with the head seen before (size {r.previous_size}): "
            + ("yes" if r.consistent_with_previous else "NO")
        )
        click.echo(f"own events in the log, unaltered: {r.own_events_verified}/{r.own_events}")
        click.echo("witnesses: " + (", ".join(r.witnesses) or "none reachable"))
        for problem in r.problems:
            click.echo(f"PROBLEM: {problem}", err=True)
        click.echo("audit: OK" if r.ok else "audit: FAILED")
    if not r.ok:
        sys.exit(EXIT_FAILED)


@main.command()
@config_option
@json_option
def doctor(config_path: Path, as_json: bool) -> None:
    """Check certificates, directory, keys, share, agent, hub and custodians."""
    from bureau_agent.doctor import run_doctor

    checks = list(run_doctor(config_path))
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(c) for c in checks]))
    else:
        marks = {"ok": "[green]ok[/]", "warning": "[yellow]warning[/]", "failed": "[red]FAILED[/]"}
        console = Console(soft_wrap=True)
        for c in checks:
            console.print(f"{marks[c.status]:<20} {escape(c.name)}: {escape(c.detail)}")
    if any(c.status == "failed" for c in checks):
        sys.exit(EXIT_FAILED)


# --------------------------------------------------------------------------
# blindmatch demo
# --------------------------------------------------------------------------


@main.command()
@click.option("--core", is_flag=True, help="Only the cryptographic core, in one process.")
@click.option(
    "--keep", type=click.Path(file_okay=False, path_type=Path), help="Keep the federation here."
)
@_handles_errors
def demo(core: bool, keep: Path | None) -> None:
    """A federation on loopback: hub, bureau agents, custodians, enrollment, queries."""
    console = Console(soft_wrap=True)  # a transcript: never break lines
    if core:
        for step in run_core_demo():
            mark = "[green]ok[/]" if step.ok else "[red]FAILED[/]"
            console.rule(f"{escape(step.title)}  {mark}")
            for line in step.lines:
                console.print("  " + escape(line))
        return
    from bureau_agent.demo import run_demo

    ok = run_demo(
        lambda text, style="": console.print(escape(text), style=style or None), keep=keep
    )
    if not ok:
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
