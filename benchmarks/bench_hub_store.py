"""The hub's stores side by side: bulk ingest through the store API (SQLite
executemany vs PostgreSQL COPY), bytes per tag on disk, and one 10,000-tag
lookup, in the same run on the same random keys.

    python -m benchmarks.bench_hub_store [--n 1000000] [--json-out PATH]

PostgreSQL runs as a throwaway local server (`tests.pg`, from the Debian
packages) with its default durability (fsync on, synchronous_commit on), as
SQLite runs with synchronous=FULL.  Nothing is asserted; the figures go to
the issue notes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from hub.policy import DatasetPolicy, EnrollSpec, QueryTag, TaggedKey, digest_of
from hub.store import HubStore, SqliteTagStore
from hub.store_pg import PostgresTagStore
from psi.identifiers import KeyType
from tests.pg import PostgresServer

BATCH = 1000  # keys per Enroll message, as agents send them


def make_keys(n: int) -> list[TaggedKey]:
    return [TaggedKey(os.urandom(16), os.urandom(16), KeyType.PASSPORT) for _ in range(n)]


async def ingest(
    open_store: Callable[[], Awaitable[HubStore]], ks: Sequence[TaggedKey]
) -> dict[str, float]:
    store = await open_store()
    try:
        started = time.perf_counter()
        enrollment = await store.begin_enrollment("FRA", EnrollSpec("bench", 1, DatasetPolicy()))
        for start in range(0, len(ks), BATCH):
            await enrollment.add(ks[start : start + BATCH])
        await enrollment.commit(len(ks), digest_of(ks))
        seconds = time.perf_counter() - started
        probe = [QueryTag(k.tag, k.key_type) for k in ks[:: max(1, len(ks) // 10_000)][:10_000]]
        started = time.perf_counter()
        result = await store.query("DEU", 1, probe, include_own=False)
        query_seconds = time.perf_counter() - started
        assert len(result.hits) == len(probe)
    finally:
        await store.close()
    return {
        "seconds": seconds,
        "tags_per_second": len(ks) / seconds,
        "query_10k_seconds": query_seconds,
    }


def sqlite_bytes(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def postgres_bytes(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE tags")
        row = conn.execute(
            "SELECT pg_total_relation_size('tags'), pg_relation_size('tags'), "
            "pg_indexes_size('tags'), pg_database_size(current_database())"
        ).fetchone()
    assert row is not None
    return {"tags_total": row[0], "tags_heap": row[1], "tags_index": row[2], "database": row[3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    ks = make_keys(args.n)
    report: dict[str, Any] = {"n": args.n}
    with tempfile.TemporaryDirectory(prefix="bench-hub-store-") as folder:
        path = Path(folder) / "hub.sqlite"
        lite = asyncio.run(ingest(lambda: SqliteTagStore.open(path, auto_sweep=False), ks))
        lite["bytes_per_tag"] = sqlite_bytes(path) / args.n
        report["sqlite"] = lite
    server = PostgresServer(durable=True)
    server.start()
    try:
        dsn = server.new_database()
        pg: dict[str, Any] = asyncio.run(
            ingest(lambda: PostgresTagStore.open(dsn, auto_sweep=False), ks)
        )
        sizes = postgres_bytes(dsn)
        pg["bytes_per_tag"] = sizes["tags_total"] / args.n
        pg["sizes"] = sizes
        report["postgres"] = pg
    finally:
        server.stop()
    print(f"{'store':<10} {'tags/s':>10} {'seconds':>9} {'bytes/tag':>10} {'query 10k':>10}")
    for name in ("sqlite", "postgres"):
        r = report[name]
        print(
            f"{name:<10} {r['tags_per_second']:>10,.0f} {r['seconds']:>9.1f} "
            f"{r['bytes_per_tag']:>10.1f} {r['query_10k_seconds']:>9.3f}s"
        )
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
