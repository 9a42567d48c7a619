"""``broker:`` settings: checked at start, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmpulse.broker_storage import (
    BrokerSettings,
    ObjectServer,
    access_key,
    broker_env,
    storage_cluster_id,
)
from llmpulse.config import ConfigError, load_settings


def _load(tmp_path: Path, yaml: str, **env: str) -> BrokerSettings:
    (tmp_path / "llmpulse.yaml").write_text(yaml)
    return load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path / "d"), **env},
                         path=tmp_path / "llmpulse.yaml").broker


def test_defaults_and_overrides(tmp_path: Path) -> None:
    assert _load(tmp_path, "") == BrokerSettings(storage="disk", fsync=False)
    got = _load(tmp_path, "broker:\n  storage: memory\n  retain_margin: 5\n  retain_min_s: 0\n")
    assert (got.storage, got.retain_margin, got.retain_min_s) == ("memory", 5, 0.0)
    assert _load(tmp_path, "broker:\n  storage: memory\n",
                 LLMPULSE_BROKER_STORAGE="disk").storage == "disk"
    assert _load(tmp_path, "").fsync is False
    assert _load(tmp_path, "broker:\n  fsync: true\n").fsync is True


@pytest.mark.parametrize(("yaml", "env", "key"), [
    ("broker:\n  storage: s3\n", {}, "broker.storage"),
    ("", {"LLMPULSE_BROKER_STORAGE": "tape"}, "LLMPULSE_BROKER_STORAGE"),
    ("broker:\n  retain_margin: -1\n", {}, "broker.retain_margin"),
    ("broker:\n  retain_margin: 1.5\n", {}, "broker.retain_margin"),
    ("broker:\n  prune_interval_s: 0\n", {}, "broker.prune_interval_s"),
    ("broker:\n  group_expiry_h: yes\n", {}, "broker.group_expiry_h"),
    ("broker:\n  storge: disk\n", {}, "broker.storge"),
    ("broker: disk\n", {}, "broker:"),
    ("broker:\n  fsync: sometimes\n", {}, "broker.fsync"),
    ("broker:\n  fsync: 0\n", {}, "broker.fsync"),
])
def test_bad_settings_name_the_key(tmp_path: Path, yaml: str, env: dict[str, str],
                                   key: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, yaml, **env)
    assert str(err.value).startswith(key), str(err.value)


def test_access_key_is_private_and_kept(tmp_path: Path) -> None:
    key = access_key(tmp_path)
    assert access_key(tmp_path) == key and len(key) == 32
    assert (tmp_path / "broker-store" / "access-key").stat().st_mode & 0o077 == 0


def test_cluster_id_is_kept_and_a_bad_one_replaced(tmp_path: Path) -> None:
    first = storage_cluster_id(tmp_path)
    assert storage_cluster_id(tmp_path) == first and first.startswith("llmpulse-")
    (tmp_path / "broker-store" / "cluster-id").write_text("../../etc")
    again = storage_cluster_id(tmp_path)
    assert again != "../../etc" and again.startswith("llmpulse-") and again[9:].isalnum()


def test_broker_env_drops_the_callers_aws_settings() -> None:
    env = broker_env("http://127.0.0.1:1", "k" * 32,
                     {"AWS_PROFILE": "prod", "aws_endpoint": "x", "PATH": "/bin"})
    assert env["PATH"] == "/bin" and env["AWS_ENDPOINT"] == "http://127.0.0.1:1"
    assert env["AWS_ACCESS_KEY_ID"] == "k" * 32
    assert "AWS_PROFILE" not in env and "aws_endpoint" not in env


@pytest.mark.parametrize("fsync", [True, False])
def test_the_object_server_runs_with_the_fsync_setting(tmp_path: Path, fsync: bool) -> None:
    server = ObjectServer.start(tmp_path / "store", settings=BrokerSettings(fsync=fsync))
    try:
        argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert (b"--no-fsync" in argv) is (not fsync)
    finally:
        server.stop()
