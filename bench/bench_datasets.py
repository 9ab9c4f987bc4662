"""Dataset ingest ÷ boto3 ``upload_file`` of the same file to the same S3 server, same run (issue 16).

Ingest is what ``cyxwiz job submit --dataset`` does against an S3 backend: hash the file (SHA-256, one
streaming pass), get a PUT presigned for exactly that hash and size into the user's area (with the store's
keyed metadata), and stream the file through it over HTTP. The baseline is boto3's managed transfer with its
defaults. Both talk to one moto S3 server on loopback. The ratio is baseline time ÷ ingest time (so ≥ 1
means ingest is as fast); goal ≥ 0.9.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.bench_storage import moto_store

SIZE = 64 << 20
ROUNDS = 5


def run() -> list[tuple[str, float, str]]:
    import httpx

    from cyxwiz.datasets.ingest import file_chunks, hash_file, upload_grant
    from cyxwiz.storage.presign import S3Presigner

    with moto_store() as store:
        presigner = S3Presigner(store=store)
        client = store.client
        with tempfile.TemporaryDirectory() as tmp, httpx.Client(timeout=120) as http:
            src = Path(tmp) / "data.npz"
            src.write_bytes(os.urandom(SIZE))

            def ingest() -> float:
                started = time.perf_counter()
                sha256, size = hash_file(src)
                grant = upload_grant(presigner, "bench-user", sha256=sha256, size=size, suffix=".npz")
                upload = grant["upload"]
                response = http.put(upload["url"], content=file_chunks(src), headers=upload["headers"])
                response.raise_for_status()
                return time.perf_counter() - started

            def baseline(config: TransferConfig | None = None) -> float:
                started = time.perf_counter()
                client.upload_file(str(src), store.bucket, "plain/data.npz", Config=config)
                return time.perf_counter() - started

            from boto3.s3.transfer import TransferConfig

            # moto takes multipart uploads slowly: the second baseline sends one request, as ingest does.
            single = TransferConfig(multipart_threshold=SIZE + 1)
            ingest(), baseline(), baseline(single)  # warm-up (connections, moto code paths)
            times: dict[str, list[float]] = {"ingest": [], "boto3": [], "single": []}
            ratios: dict[str, list[float]] = {"boto3": [], "single": []}
            # Interleaved rounds, ratio per round, median: the machine is shared and load drifts.
            for _ in range(ROUNDS):
                t = {"ingest": ingest(), "boto3": baseline(), "single": baseline(single)}
                for name, value in t.items():
                    times[name].append(value)
                ratios["boto3"].append(t["boto3"] / t["ingest"])
                ratios["single"].append(t["single"] / t["ingest"])
            key = f"users/bench-user/datasets/{hash_file(src)[0]}.npz"
            assert store.get_bytes(key) == src.read_bytes()  # the ingested object passes the verified read
    rate = {name: SIZE / 1e6 / statistics.median(values) for name, values in times.items()}
    return [
        (
            "dataset ingest / boto3 upload_file",
            statistics.median(ratios["boto3"]),
            f"{rate['ingest']:.0f} vs {rate['boto3']:.0f} MB/s, {SIZE >> 20} MiB; ingest = SHA-256 + "
            "hash/size-bound presigned PUT, baseline = upload_file defaults (multipart); goal >= 0.9",
        ),
        (
            "dataset ingest / upload_file one request",
            statistics.median(ratios["single"]),
            f"{rate['ingest']:.0f} vs {rate['single']:.0f} MB/s; baseline upload_file without multipart",
        ),
    ]
