"""Site configuration: defaults, validation, round trip; and the MUNGE socket from slurm.conf."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcmig import config
from hpcmig.auth import munge
from hpcmig.errors import UsageError


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert config.load(str(tmp_path / "none.toml")) == config.Config()


def test_render_parse_round_trip() -> None:
    cfg = config.Config(state_dir="/shared/hpcmig", agent_port=7200, admin_users=("ops",))
    assert config.parse(config.render(cfg, "# header")) == cfg


@pytest.mark.parametrize("text, match", [
    ("statedir = '/x'", "unknown key"),
    ("agent_port = 'x'", "must be a int"),
    ("state_dir = 'relative'", "absolute"),
    ("pool = '10.0.0.0/33'", "bad pool"),
    ("block_prefix = 8", "block_prefix"),
    ("mpi = 'lam'", "mpich or openmpi"),
    ("= broken", "config"),
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
