"""SandboxPolicy (SPEC E1, E3): the non-negotiable protections cannot be switched off."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyxwiz.errors import ValidationError
from cyxwiz.sandbox import SandboxPolicy, get_backend


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("network", True),
        ("read_only_root", False),
        ("drop_all_capabilities", False),
        ("no_new_privileges", False),
        ("seccomp", False),
        ("uid", 0),
        ("gid", 0),
        ("runtime", "kata"),
    ],
)
def test_weakening_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        SandboxPolicy(**{field: value})  # type: ignore[arg-type]
    assert err.value.rule in ("E1", "E3")


def test_relative_extra_path_refused() -> None:
    with pytest.raises(ValidationError):
        SandboxPolicy(extra_ro_paths=(Path("data"),))


def test_default_binds_cover_the_runtime() -> None:
    import sys

    import cyxwiz

    paths = SandboxPolicy().ro_paths
    for needed in (Path(sys.prefix), Path(sys.base_prefix), Path(cyxwiz.__file__).resolve().parent):
        assert any(needed == p or p in needed.parents for p in paths), needed


def test_unknown_backend_refused() -> None:
    with pytest.raises(ValidationError) as err:
        get_backend("chroot")
    assert err.value.field == "backend"


def test_gvisor_is_docker_with_runsc() -> None:
    backend = get_backend("gvisor")
    assert backend.name == "gvisor"
    assert backend.policy.runtime == "runsc"  # type: ignore[attr-defined]
