"""``make demo``'s balance tables list each wallet once (issue 16): ``EmbeddedStack.balances`` also keys
demo-user and node-1 as ``user``/``node`` for older callers, and the table printed both."""

from __future__ import annotations

from infra.demo import _show_balances, console


def test_each_wallet_is_printed_once() -> None:
    balances = {"user": 7, "node": 3, "user:demo-user": 7, "user:user-2": 11, "node:node-1": 3}
    with console.capture() as captured:
        _show_balances("Balances", balances)
    rows = [line for line in captured.get().splitlines() if ":" in line]
    assert [row.split()[1] for row in rows] == ["user:demo-user", "user:user-2", "node:node-1"]
