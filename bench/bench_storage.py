"""Object store throughput: verified + encrypted upload/download ÷ plain boto3 put/get (issue 6).

Both talk to the same moto S3 server on loopback, same bytes, same run. The store adds SHA-256 on write
(sent as ChecksumSHA256), a keyed metadata tag, a manifest update, multipart streaming, AES-256-GCM
envelope encryption, and on read a full re-hash and decryption. Goal: ratio ≥ 0.7.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyxwiz.storage import S3ObjectStore

SIZE = 64 << 20
ROUNDS = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_store() -> Iterator[S3ObjectStore]:
    """A fresh encrypted S3 store on a moto server of its own (loopback), stopped on exit."""
    from cyxwiz.storage import MasterKey, S3ObjectStore

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        store = S3ObjectStore(
            bucket=f"bench-{uuid.uuid4().hex[:8]}",
            master_key=MasterKey.generate(),
            endpoint_url=f"http://127.0.0.1:{port}",
            region="us-east-1",
            access_key_id="bench",
            secret_access_key="bench",
        )
        store.ensure_bucket()
        yield store
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run() -> list[tuple[str, float, str]]:
    with moto_store() as store:
        client = store.client
        data = os.urandom(SIZE)
        with tempfile.TemporaryDirectory() as tmp:
            src, dest = Path(tmp) / "src.bin", Path(tmp) / "dest.bin"
            src.write_bytes(data)

            def plain() -> float:
                started = time.perf_counter()
                client.put_object(Bucket=store.bucket, Key="plain/obj", Body=src.read_bytes())
                dest.write_bytes(client.get_object(Bucket=store.bucket, Key="plain/obj")["Body"].read())
                return time.perf_counter() - started

            def transfer() -> float:
                # boto3's managed transfer (s3transfer): multipart with the same 8 MiB parts as ours.
                started = time.perf_counter()
                client.upload_file(str(src), store.bucket, "plain/xfer", Config=xfer)
                client.download_file(store.bucket, "plain/xfer", str(dest))
                return time.perf_counter() - started

            def ours(encrypt: bool) -> float:
                started = time.perf_counter()
                store.put_file("jobs/bench/outputs/model", src, encrypt=encrypt)
                store.get_file("jobs/bench/outputs/model", dest)
                return time.perf_counter() - started

            from boto3.s3.transfer import TransferConfig

            xfer = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
            plain(), transfer(), ours(True)  # warm-up (connection pool, moto code paths)
            # Interleaved rounds, ratio per round, median: the machine is shared and load drifts.
            times: dict[str, list[float]] = {"plain": [], "xfer": [], "enc": [], "int": []}
            ratios: dict[str, list[float]] = {"enc/plain": [], "enc/xfer": [], "int/xfer": []}
            for _ in range(ROUNDS):
                t = {"plain": plain(), "enc": ours(True), "xfer": transfer(), "int": ours(False)}
                for name, value in t.items():
                    times[name].append(value)
                ratios["enc/plain"].append(t["plain"] / t["enc"])
                ratios["enc/xfer"].append(t["xfer"] / t["enc"])
                ratios["int/xfer"].append(t["xfer"] / t["int"])
            assert dest.read_bytes() == data
    mb = 2 * SIZE / 1e6
    rate = {name: mb / statistics.median(values) for name, values in times.items()}
    med = {name: statistics.median(values) for name, values in ratios.items()}
    return [
        (
            "encrypted+verified / put_object+get",
            med["enc/plain"],
            f"{rate['enc']:.0f} vs {rate['plain']:.0f} MB/s, {SIZE >> 20} MiB put+get; baseline is one "
            "request each way (moto handles multipart slowly), goal >= 0.7",
        ),
        (
            "encrypted+verified / upload_file+download",
            med["enc/xfer"],
            f"{rate['enc']:.0f} vs {rate['xfer']:.0f} MB/s; baseline boto3 managed transfer, 8 MiB parts",
        ),
        (
            "verified only / upload_file+download",
            med["int/xfer"],
            f"{rate['int']:.0f} vs {rate['xfer']:.0f} MB/s; SHA-256, tag, manifest, no client encryption",
        ),
    ]
