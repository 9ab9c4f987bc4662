"""``cyxwiz store`` end to end on both backends: one line per refusal, exit 1 when verify finds damage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cyxwiz.cli import app as root_app
from cyxwiz.storage import MasterKey, layout
from tests.storage.conftest import MotoServer

J1 = "job-000000000000000000a1"  # canonical job ids (cyxwiz.ids.JOB_ID)

KEY = layout.job_output(J1, "model")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    key_file = tmp_path / "master.key"
    MasterKey.generate().write(key_file)
    return {"CYXWIZ_STORE_MASTER_KEY_FILE": str(key_file), "CYXWIZ_STORE_URL": ""}


def _run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(root_app, ["store", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_put_ls_get_verify_local(tmp_path: Path, env: dict[str, str]) -> None:
    store = str(tmp_path / "store")
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(5000))
    code, out, err = _run(["put", str(src), KEY, "--encrypt", "--store", store], env)
    assert code == 0, err
    assert "(encrypted)" in out
    code, out, _ = _run(["ls", f"jobs/{J1}/", "--store", store, "--json"], env)
    listed = json.loads(out)
    assert [o["key"] for o in listed] == [layout.job_manifest(J1), KEY]
    dest = tmp_path / "back.bin"
    code, _, err = _run(["get", KEY, str(dest), "--store", store], env)
    assert code == 0 and dest.read_bytes() == src.read_bytes() and "(verified)" in err
    code, out, _ = _run(["verify", J1, "--store", store], env)
    assert code == 0 and "1 object(s) verified, ok" in out
    # Tamper with one byte on disk: verify reports it (exit 1) and get refuses in one line (exit 2).
    body = tmp_path / "store" / "objects" / KEY
    raw = bytearray(body.read_bytes())
    raw[100] ^= 1
    body.write_bytes(bytes(raw))
    code, out, _ = _run(["verify", J1, "--store", store], env)
    assert code == 1 and f"FAIL {KEY}: integrity" in out
    code, _, err = _run(["get", KEY, str(tmp_path / "again.bin"), "--store", store], env)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "SHA-256" in err
    assert not (tmp_path / "again.bin").exists()


def test_errors_are_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    store = str(tmp_path / "store")
    code, _, err = _run(["get", "jobs/../etc/passwd", "-", "--store", store], env)
    assert code == 2 and err.startswith("error: key:") and err.count("\n") == 1
    code, _, err = _run(["get", KEY, "-", "--store", store], env)
    assert code == 4 and "no such object" in err
    code, _, err = _run(["ls", "--store", "ftp://x"], env)
    assert code == 2 and "unsupported store scheme" in err
    code, _, err = _run(["verify", "--store", store], env)
    assert code == 2 and "job id or --prefix" in err
    code, _, err = _run(["ls"], {**env, "CYXWIZ_STORE_ROOT": "", "CYXWIZ_S3_BUCKET": ""})
    assert code == 2 and "no object store configured" in err


def test_put_get_s3(tmp_path: Path, env: dict[str, str], moto_server: MotoServer, s3_bucket: str) -> None:
    s3_env = {
        **env,
        "CYXWIZ_S3_ENDPOINT_URL": moto_server.endpoint_url,
        "CYXWIZ_S3_REGION": moto_server.region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    from tests.storage.conftest import make_s3_store

    make_s3_store(moto_server, s3_bucket, None)  # creates the bucket
    src = tmp_path / "data.npz"
    src.write_bytes(b"dataset" * 1000)
    url = f"s3://{s3_bucket}/archive"
    code, _, err = _run(["put", str(src), layout.job_input(J1, "data.npz"), "--store", url], s3_env)
    assert code == 0, err
    code, out, _ = _run(["get", layout.job_input(J1, "data.npz"), "-", "--store", url], s3_env)
    assert code == 0 and out.encode() == src.read_bytes()
    code, out, _ = _run(["verify", "--prefix", "jobs/", "--store", url], s3_env)
    assert code == 0 and "ok" in out
