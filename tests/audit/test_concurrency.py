"""Several processes (and threads in each) writing at once: whole lines, one chain, verify passes (H3, H4)."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cyxwiz.audit import AuditLog
from cyxwiz.audit.reader import iter_events
from cyxwiz.audit.verify import verify_log
from tests.audit.conftest import TEST_KEY, ManualClock, sample_event

PER_WORKER = 300

_CHILD = """
import sys
from pathlib import Path
from cyxwiz.audit import AuditLog, events
log = AuditLog.open(Path(sys.argv[1]), signing_key=Path(sys.argv[4]), auto_maintain=False)
for i in range(int(sys.argv[2])):
    log.record(events.data_access(actor_id="spawned-" + sys.argv[3], actor_type="service", resource="r",
                                  action="a", details={"i": i}))
log.close()
"""


def _forked_writer(log: AuditLog, worker: int) -> None:
    # Uses the handle inherited from the parent: the at-fork hook must give this process its own lock.
    errors: list[str] = []

    def burst(thread: int) -> None:
        try:
            for i in range(PER_WORKER // 2):
                log.record(sample_event(worker * 10_000 + thread * 1_000 + i))
        except BaseException:
            errors.append(traceback.format_exc())
            raise

    threads = [threading.Thread(target=burst, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        log.close()
    except BaseException:
        errors.append(traceback.format_exc())
    if errors:  # the parent shows why this child failed
        (log.directory.parent / f"child-{worker}.err").write_text("\n".join(errors))
        raise SystemExit(1)


@pytest.mark.slow
def test_processes_and_threads_append_to_one_verifiable_chain(
    log_dir: Path, clock: ManualClock, signing_key: Ed25519PrivateKey
) -> None:
    # A real clock here: fork children and spawned interpreters cannot share a ManualClock.
    log = AuditLog.open(log_dir, signing_key=signing_key, auto_maintain=False)
    log.record(sample_event(0))  # the parent holds an open file and a cached head before forking
    ctx = multiprocessing.get_context("fork")
    forked = [ctx.Process(target=_forked_writer, args=(log, w)) for w in range(1, 4)]
    from cyxwiz.pki.keys import write_private_key

    key_file = log_dir.parent / "audit-key.pem"
    write_private_key(key_file, signing_key)
    spawned = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(log_dir), str(PER_WORKER), str(n), str(key_file)])
        for n in range(2)
    ]
    for p in forked:
        p.start()
    for _ in range(PER_WORKER):
        log.record(sample_event(1))  # the parent keeps writing through its cached head meanwhile
    for n, p in enumerate(forked, start=1):
        p.join(60)
        err = log_dir.parent / f"child-{n}.err"
        assert p.exitcode == 0, err.read_text() if err.exists() else f"child {n} exit {p.exitcode}"
    for sp in spawned:
        assert sp.wait(60) == 0
    log.close()

    report = verify_log(log_dir, public_key=TEST_KEY.public_key())
    assert report.ok, report.problems[:3]
    total = 1 + PER_WORKER + 3 * PER_WORKER + 2 * PER_WORKER
    assert report.records == total
    seqs = [e.seq for e in iter_events(log_dir)]
    assert seqs == list(range(1, total + 1))
    actors = {e.event["actor_id"] for e in iter_events(log_dir)}
    assert {"spawned-0", "spawned-1"} <= actors


def _write_in_child(log: AuditLog) -> None:
    for i in range(20):
        log.record(sample_event(i))
    log.close()


def test_a_forked_child_gets_its_own_lock_even_when_another_log_is_gone(tmp_path: Path) -> None:
    """A log whose directory was removed (a finished test, a rotated deployment) cannot be reopened in
    the child; the other logs must still stop sharing the parent's lock and state."""
    import shutil

    gone = []  # several, so that some come before the kept one in the at-fork walk
    for n in range(8):
        gone.append(AuditLog.open(tmp_path / f"gone-{n}", signing_key=TEST_KEY, auto_maintain=False))
        gone[-1].record(sample_event(n))
        shutil.rmtree(tmp_path / f"gone-{n}")
    log = AuditLog.open(tmp_path / "kept", signing_key=TEST_KEY, auto_maintain=False)
    log.record(sample_event(1))
    child = multiprocessing.get_context("fork").Process(target=_write_in_child, args=(log,))
    child.start()
    for i in range(20):
        log.record(sample_event(100 + i))
    child.join(60)
    assert child.exitcode == 0
    log.close()
    report = verify_log(tmp_path / "kept", public_key=TEST_KEY.public_key())
    assert report.ok, report.problems[:3]
    assert report.records == 41


def test_the_at_fork_hook_survives_a_log_whose_directory_is_gone(tmp_path: Path) -> None:
    """The hook itself, called directly: it must reset every log it can and retire the others."""
    import shutil

    from cyxwiz.audit.log import _after_fork_in_child
    from cyxwiz.errors import AuditError

    gone = AuditLog.open(tmp_path / "gone", signing_key=TEST_KEY, auto_maintain=False)
    kept = AuditLog.open(tmp_path / "kept", signing_key=TEST_KEY, auto_maintain=False)
    kept.record(sample_event(1))
    shutil.rmtree(tmp_path / "gone")
    _after_fork_in_child()  # never raises
    with pytest.raises(AuditError, match="closed"):
        gone.record(sample_event(2))
    kept.record(sample_event(3))
    kept.close()
    assert verify_log(tmp_path / "kept", public_key=TEST_KEY.public_key()).records == 2
