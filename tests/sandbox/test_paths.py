"""Bridge path rules (SPEC E5): the traversal corpus, symlink escapes, TOCTOU re-check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cyxwiz.errors import PathRuleError
from cyxwiz.sandbox.paths import check_relative_path, open_confined, resolve_confined

CORPUS = {
    "absolute": "/etc/passwd",
    "dotdot": "../secret",
    "dotdot-inner": "a/../../secret",
    "dot": "./a",
    "empty": "",
    "empty-component": "a//b",
    "trailing-slash": "a/",
    "percent-dotdot": "%2e%2e/secret",
    "percent-slash": "a%2fb",
    "backslash": "..\\secret",
    "nul": "a\x00b",
    "newline": "a\nb",
    "home": "~/x",
    "lone-surrogate": "a\udcffb",
    "nfd": "cafe\u0301",
    "very-long": "a/" * 600 + "b",
    "long-component": "a" * 256,
}


@pytest.mark.parametrize("raw", list(CORPUS.values()), ids=list(CORPUS))
def test_corpus_refused(raw: str) -> None:
    with pytest.raises(PathRuleError) as err:
        check_relative_path(raw)
    assert err.value.rule == "E5"
    assert err.value.field == "path"


@pytest.mark.parametrize("raw", [None, 5, b"a", ["a"]])
def test_non_strings_refused(raw: object) -> None:
    with pytest.raises(PathRuleError, match="string"):
        check_relative_path(raw)


@pytest.mark.parametrize("raw", ["a", "ckpt/step-10.pt", "d\u00e9j\u00e0/x", "..a", "a.."])
def test_fine_paths(raw: str) -> None:
    assert str(check_relative_path(raw)) == raw


def test_symlink_escape_refused(tmp_path: Path) -> None:
    root = tmp_path / "job"
    root.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    (root / "link").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    (root / "abs").symlink_to("/etc/passwd")
    for name in ("link", "dirlink/secret", "abs"):
        with pytest.raises(PathRuleError, match="outside"):
            resolve_confined(root, name)


def test_symlink_inside_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "job"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("x")
    (root / "alias").symlink_to("d/f")
    fd = open_confined(root, "alias")
    try:
        assert os.read(fd, 10) == b"x"
    finally:
        os.close(fd)


def test_open_refuses_non_regular_and_oversize(tmp_path: Path) -> None:
    root = tmp_path / "job"
    (root / "d").mkdir(parents=True)
    (root / "big").write_bytes(b"x" * 100)
    with pytest.raises(PathRuleError, match="regular"):
        open_confined(root, "d")
    with pytest.raises(PathRuleError, match="larger"):
        open_confined(root, "big", max_bytes=10)
    with pytest.raises(PathRuleError, match="exist"):
        open_confined(root, "missing")
