"""The agent's configuration file: the `[custodian]` table's share files."""

from __future__ import annotations

from pathlib import Path

import pytest

from bureau_agent.config import AgentConfig, ConfigError

BASE = """
bureau = "FRA"
federation = "federation"
credentials = "federation/bureaus/FRA"
state_dir = "/var/lib/blindmatch"
"""


def load(tmp_path: Path, custodian: str) -> AgentConfig:
    path = tmp_path / "FRA.toml"
    path.write_text(BASE + "\n[custodian]\n" + custodian)
    return AgentConfig.load(path)


def test_shares_list_one_file_per_epoch(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        'shares = ["keys/epoch-1.share.json", "/abs/epoch-2.share.json"]\nmax_batch = 512\n',
    )
    assert config.custodian is not None
    assert config.custodian.shares == (
        tmp_path / "keys" / "epoch-1.share.json",  # relative to the file's folder
        Path("/abs/epoch-2.share.json"),
    )
    assert config.custodian.max_batch == 512


def test_single_share_key_is_still_accepted(tmp_path: Path) -> None:
    config = load(tmp_path, 'share = "epoch-1.share.json"\n')
    assert config.custodian is not None
    assert config.custodian.shares == (tmp_path / "epoch-1.share.json",)


def test_no_custodian_table_means_no_custodian_role(tmp_path: Path) -> None:
    path = tmp_path / "USA.toml"
    path.write_text(BASE.replace("FRA", "USA"))
    assert AgentConfig.load(path).custodian is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('share = "a.json"\nshares = ["b.json"]\n', "both share and shares"),
        ("shares = []\n", "non-empty list"),
        ('shares = "a.json"\n', "non-empty list"),
        ("shares = [1]\n", "non-empty strings"),
        ('shares = ["a.json", "./a.json"]\n', "a.json twice"),
        ("max_batch = 10\n", "needs shares"),
        ('shares = ["a.json"]\nshare_file = "b.json"\n', "unknown key(s) ['share_file']"),
        ('shares = ["a.json"]\nmax_batch = 0\n', "max_batch must be a positive number"),
    ],
    ids=["both", "empty", "not-a-list", "not-strings", "same-file-twice", "none", "unknown",
         "bad-number"],
)  # fmt: skip
def test_bad_custodian_tables_are_refused(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"FRA\.toml") as info:
        load(tmp_path, table)
    assert message in str(info.value)
