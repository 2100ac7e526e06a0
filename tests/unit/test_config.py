"""Site configuration: defaults, validation, round trip; and the MUNGE socket from slurm.conf."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcmig import config
from hpcmig.auth import munge
from hpcmig.errors import UsageError
from hpcmig.health.rules import Policy


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert config.load(str(tmp_path / "none.toml")) == config.Config()


def test_render_parse_round_trip() -> None:
    cfg = config.Config(state_dir="/shared/hpcmig", agent_port=7200, admin_users=("ops",),
                        network_fastpath=False, network_l2=True,
                        network_l2_pool="10.9.0.0/16", network_l2_uplink="ib0e")
    assert config.parse(config.render(cfg, "# header")) == cfg
    assert "network_fastpath = false" in config.render(cfg)
    assert "[health]" not in config.render(cfg)  # a default policy needs no table


def test_the_l2_keys_are_checked_only_where_the_l2_data_path_is_on() -> None:
    """A site whose own pool overlaps the default data pool keeps its configuration."""
    cfg = config.parse("pool = '10.250.0.0/15'\n")
    assert cfg.pool == "10.250.0.0/15" and not cfg.network_l2
    with pytest.raises(UsageError, match="must be as large as pool"):
        config.parse("pool = '10.250.0.0/15'\nnetwork_l2 = true\n")


def test_health_table_and_keys_round_trip() -> None:
    policy = Policy(dry_run=True, interval=1.5, ce_rise=3, ce_window=10.0, free_min_mb=32,
                    resume_after=120.0, balance=True, balance_seconds=4.0)
    cfg = config.Config(health=policy, health_check_dir="/site/checks.d",
                        health_paths=("/scratch", "/local"), health_load="mntns")
    text = config.render(cfg, "# generated")
    assert text.endswith("\n[health]\ndry_run = true\ninterval = 1.5\nce_rise = 3\n"
                         "ce_window = 10.0\nfree_min_mb = 32\nresume_after = 120.0\n"
                         "balance = true\nbalance_seconds = 4.0\n")
    back = config.parse(text)
    assert back == cfg and back.health == policy
    assert back.watched_paths == ("/var/lib/hpcmig", "/var/spool/hpcmig/ckpt", "/run/hpcmig",
                                  "/scratch", "/local")


def test_health_defaults() -> None:
    cfg = config.parse("")
    assert cfg.health == Policy() and cfg.health_check_dir == "/etc/hpcmig/checks.d"
    assert (cfg.health_paths, cfg.health_load) == ((), "loadavg")
    assert config.parse("health_check_dir = ''").health_check_dir == ""  # no check scripts
    assert config.parse("[health]\ninterval = 5").health.interval == 5.0
    with pytest.raises(UsageError, match=r"config: \[health\]: interval must be greater"):
        config.Config(health=Policy(interval=0)).validate()


@pytest.mark.parametrize("text, match", [
    ("statedir = '/x'", "unknown key"),
    ("agent_port = 'x'", "must be a int"),
    ("state_dir = 'relative'", "absolute"),
    ("pool = '10.0.0.0/33'", "bad pool"),
    ("block_prefix = 8", "block_prefix"),
    ("mpi = 'lam'", "mpich or openmpi"),
    ("= broken", "config"),
    ("health = 3", "health must be a table"),
    ("[health]\nce_windw = 5", r"config: \[health\]: unknown key\(s\) ce_windw \(known keys: "),
    ("[health]\nenabled = 'yes'", r"\[health\]: enabled must be true or false"),
    ("[health]\nballance = true", "known keys: enabled, dry_run, interval"),
    ("health_load = 'psi'", "health_load must be loadavg or mntns"),
    ("network_fastpath = 1", "network_fastpath must be a bool"),
    ("network_l2 = true\nnetwork_l2_pool = '10.250.0.0/24'",
     "must be as large as pool 10.252.0.0/16"),
    ("network_l2 = true\nnetwork_l2_pool = '10.252.0.0/16'", "must not overlap it"),
    ("network_l2 = true\nnetwork_l2_pool = 'ten'", "bad network_l2_pool"),
    ("network_l2 = true\nnetwork_l2_uplink = 'a/b'", "bad network_l2_uplink"),
    ("agent_port = true", "must be a int"),
    ("migration_mode = 'lazy'", "migration_mode must be postcopy or stop-and-copy"),
    ("health_paths = ['scratch']", "not an absolute path"),
    ("health_paths = '/scratch'", "health_paths must be a list of strings"),
    ("health_check_dir = 'checks.d'", "health_check_dir must be an absolute path"),
])
def test_bad_configuration_is_one_clear_error(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        config.parse(text)


def test_munge_socket_comes_from_slurm_conf(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("AuthType=auth/munge\nAuthInfo=cred_expire=20,socket=/x/munge.sock # c\n")
    monkeypatch.delenv(munge.SOCKET_ENV, raising=False)
    monkeypatch.setenv("SLURM_CONF", str(conf))
    assert munge.socket_path() == "/x/munge.sock"
    monkeypatch.setenv(munge.SOCKET_ENV, "/env.sock")
    assert munge.socket_path() == "/env.sock"
