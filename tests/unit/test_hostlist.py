import pytest

from hpcmig.errors import UsageError
from hpcmig.hostlist import compress, expand


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("node[1-3]", ["node1", "node2", "node3"]),
        ("node[1-2,7],login", ["node1", "node2", "node7", "login"]),
        ("gpu[08-10]", ["gpu08", "gpu09", "gpu10"]),
        ("node5", ["node5"]),
        ("", []),
        ("(null)", []),
        ("rack[1-2]-n", ["rack1-n", "rack2-n"]),
    ],
)
def test_expand(expr: str, names: list[str]) -> None:
    assert expand(expr) == names


@pytest.mark.parametrize("bad", ["node[1-3", "node1-3]", "node[3-1]", "node[a-b]"])
def test_expand_rejects_malformed(bad: str) -> None:
    with pytest.raises(UsageError):
        expand(bad)


@pytest.mark.parametrize(
    "names",
    [
        ["node1", "node2", "node3", "node7"],
        ["gpu08", "gpu09", "gpu10"],
        ["login", "node1"],
        ["node4"],
    ],
)
def test_compress_round_trips(names: list[str]) -> None:
    assert sorted(expand(compress(names))) == sorted(names)


def test_compress_ranges() -> None:
    assert compress(["node1", "node2", "node3", "node7"]) == "node[1-3,7]"
    assert compress(["node3", "node1"]) == "node[1,3]"
