"""The local ledger service: one process owning LiteSVM, speaking the Solana JSON-RPC subset solana-py uses.

LiteSVM lives inside one process, while flows, agents and the coordinator are separate processes; this
service is the embedded default's "cluster". It listens on loopback only (SPEC D1 allows unencrypted
plumbing there and nowhere else), persists every account it touched to a snapshot so a restart keeps
balances, and refuses to start on a corrupt snapshot.

Methods: getHealth, getVersion, getLatestBlockhash, getBlockHeight, getSlot, getBalance, getAccountInfo,
getMultipleAccounts, getMinimumBalanceForRentExemption, sendTransaction, getSignatureStatuses,
requestAirdrop; with ``dev_methods`` also ``cyxwiz_expireBlockhash`` (tests: make a blockhash expire now).
All LiteSVM access happens on the event loop's one thread (the ASGI app is synchronous inside).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from solders.account import Account
from solders.pubkey import Pubkey

from cyxwiz.errors import ConfigError
from cyxwiz.ledger.asgi import Receive, Scope, Send, run_on_socket, serve_json
from cyxwiz.ledger.chain import LocalChain, TransactionRejectedError

MAX_BODY = 1 << 20
SNAPSHOT_NAME = "ledger-snapshot.json"


class RpcFault(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _pubkey(params: list[Any], index: int = 0) -> Pubkey:
    try:
        return Pubkey.from_string(str(params[index]))
    except Exception:
        raise RpcFault(-32602, f"Invalid param: not a public key at position {index}") from None


def _account_json(account: Account | None) -> dict[str, Any] | None:
    if account is None:
        return None
    return {
        "lamports": account.lamports,
        "owner": str(account.owner),
        "data": [base64.b64encode(bytes(account.data)).decode(), "base64"],
        "executable": account.executable,
        "rentEpoch": account.rent_epoch,
        "space": len(account.data),
    }


class LedgerRpcApp:
    """ASGI app: POST / with a JSON-RPC 2.0 request (or batch)."""

    def __init__(self, *, chain: LocalChain, dev_methods: bool = False) -> None:
        self.chain = chain
        self.dev_methods = dev_methods
        self._methods: dict[str, Callable[[list[Any]], Any]] = {
            "getHealth": lambda p: "ok",
            "getVersion": lambda p: {"solana-core": "cyxwiz-litesvm", "feature-set": 0},
            "getLatestBlockhash": self._latest_blockhash,
            "getBlockHeight": lambda p: self.chain.block_height(),
            "getSlot": lambda p: self.chain.block_height(),
            "getBalance": lambda p: self._ctx(self.chain.lamports(_pubkey(p))),
            "getAccountInfo": lambda p: self._ctx(_account_json(self.chain.get_account(_pubkey(p)))),
            "getMultipleAccounts": self._multiple_accounts,
            "getMinimumBalanceForRentExemption": lambda p: self.chain.minimum_rent(int(p[0])),
            "sendTransaction": self._send_transaction,
            "getSignatureStatuses": self._signature_statuses,
            "requestAirdrop": self._airdrop,
        }
        if dev_methods:
            self._methods["cyxwiz_expireBlockhash"] = lambda p: self.chain.expire_blockhash()

    # -- methods ----------------------------------------------------------------------------------

    def _ctx(self, value: Any) -> dict[str, Any]:
        return {"context": {"slot": self.chain.block_height(), "apiVersion": "2.0.0"}, "value": value}

    def _latest_blockhash(self, params: list[Any]) -> dict[str, Any]:
        blockhash, last_valid = self.chain.latest_blockhash()
        return self._ctx({"blockhash": str(blockhash), "lastValidBlockHeight": last_valid})

    def _multiple_accounts(self, params: list[Any]) -> dict[str, Any]:
        keys = params[0] if params and isinstance(params[0], list) else []
        if len(keys) > 100:
            raise RpcFault(-32602, "Invalid param: at most 100 accounts")
        return self._ctx([_account_json(self.chain.get_account(_pubkey(keys, i))) for i in range(len(keys))])

    def _send_transaction(self, params: list[Any]) -> str:
        if not params or not isinstance(params[0], str):
            raise RpcFault(-32602, "Invalid params: expected an encoded transaction")
        config = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
        if (
            config.get("encoding") != "base64"
        ):  # base58 is deprecated for transactions; solana-py sends base64
            raise RpcFault(-32602, "Invalid params: only base64-encoded transactions are accepted")
        try:
            raw = base64.b64decode(params[0], validate=True)
        except ValueError:
            raise RpcFault(-32602, "Invalid params: transaction is not valid base64") from None
        try:
            return self.chain.send_raw(raw, preflight=not config.get("skipPreflight", False))
        except TransactionRejectedError as exc:
            data = {"err": exc.err_json, "logs": list(exc.logs), "accounts": None, "unitsConsumed": 0}
            raise RpcFault(-32002, f"Transaction simulation failed: {exc.reason}", data) from None

    def _signature_statuses(self, params: list[Any]) -> dict[str, Any]:
        signatures = params[0] if params and isinstance(params[0], list) else []
        if len(signatures) > 256:
            raise RpcFault(-32602, "Invalid param: at most 256 signatures")
        values: list[dict[str, Any] | None] = []
        for signature in signatures:
            status = self.chain.signature_status(str(signature))
            if status is None:
                values.append(None)
                continue
            err = None if status.err is None else _err_json(status.err)
            values.append(
                {
                    "slot": status.slot,
                    "confirmations": None,
                    "err": err,
                    "status": {"Ok": None} if err is None else {"Err": err},
                    "confirmationStatus": "finalized",
                }
            )
        return self._ctx(values)

    def _airdrop(self, params: list[Any]) -> str:
        lamports = params[1] if len(params) > 1 else None
        if not isinstance(lamports, int) or isinstance(lamports, bool) or not 0 < lamports <= 10**15:
            raise RpcFault(-32602, "Invalid param: lamports")
        return self.chain.airdrop(_pubkey(params), lamports)

    # -- JSON-RPC plumbing ------------------------------------------------------------------------

    def handle(self, request: Any) -> dict[str, Any]:
        request_id = request.get("id") if isinstance(request, dict) else None
        try:
            if not isinstance(request, dict) or request.get("jsonrpc") != "2.0":
                raise RpcFault(-32600, "Invalid request")
            method = self._methods.get(str(request.get("method")))
            if method is None:
                raise RpcFault(-32601, "Method not found")
            params = request.get("params") or []
            if not isinstance(params, list):
                raise RpcFault(-32602, "Invalid params")
            return {"jsonrpc": "2.0", "result": method(params), "id": request_id}
        except RpcFault as fault:
            error: dict[str, Any] = {"code": fault.code, "message": fault.message}
            if fault.data is not None:
                error["data"] = fault.data
            return {"jsonrpc": "2.0", "error": error, "id": request_id}
        except (IndexError, TypeError, ValueError) as exc:
            return {
                "jsonrpc": "2.0",
                "error": {"code": -32602, "message": f"Invalid params: {exc}"},
                "id": request_id,
            }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parse_error = {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}}
        await serve_json(
            scope, receive, send, dispatch=self._dispatch, max_body=MAX_BODY,
            too_large={"error": "request too large"}, not_json=(200, parse_error),
        )  # fmt: skip

    async def _dispatch(self, method: str, _path: str, request: Any) -> tuple[int, Any]:
        if method != "POST":
            return 405, {"error": "POST JSON-RPC only"}
        if request is None:
            return 200, {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}}
        if isinstance(request, list):
            return 200, [self.handle(r) for r in request[:100]]
        return 200, self.handle(request)


def _err_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def require_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigError(
            "the local ledger service speaks plain HTTP and listens on loopback only",
            field="host",
            rule="D1",
            hint="use 127.0.0.1; put a real cluster's RPC behind TLS instead",
        )


def serve(
    *,
    state_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_file: Path | None = None,
    dev_methods: bool = False,
) -> None:
    """Run the service until interrupted. Raises SnapshotCorruptError before binding on a bad snapshot."""
    require_loopback(host)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    chain = LocalChain(snapshot=state_dir / SNAPSHOT_NAME)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Replies are small: without NODELAY, Nagle + delayed ACK add ~40 ms to every loopback call.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound_port = sock.getsockname()[1]
    app = LedgerRpcApp(chain=chain, dev_methods=dev_methods)
    run_on_socket(app, sock, ready_file=ready_file, ready={"rpc_url": f"http://{host}:{bound_port}"})
