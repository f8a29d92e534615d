"""psi/ is pure: importing it pulls in no I/O, network or RPC machinery."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ["grpc", "sqlite3", "socket", "asyncio", "logging", "click", "rich", "psycopg"]


def test_psi_imports_no_io_modules() -> None:
    code = (
        "import sys, pkgutil, importlib, psi\n"
        "for m in pkgutil.iter_modules(psi.__path__):\n"
        "    importlib.import_module('psi.' + m.name)\n"
        f"print([n for n in {FORBIDDEN!r} if n in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
