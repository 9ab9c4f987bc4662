"""Reading stored bytes back and proving them (SPEC D2, D3): the prefetch pipeline, the hash checks of
stored and plaintext bytes, and the one generator that yields plaintext only as far as it verifies.

Every reader of :class:`~cyxwiz.storage.base.BaseObjectStore` (get_file, open_verified, check, verify)
goes through :func:`verified_plaintext`, so a download, a stream to a peer and a verification run refuse
exactly the same objects.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from queue import Full, Queue

from cyxwiz.errors import DecryptionError, IntegrityError
from cyxwiz.storage.crypto import MasterKey, StreamDecryptor
from cyxwiz.storage.model import ObjectInfo, Progress

READ_BLOCK = 1 << 20


def prefetch(chunks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """Pull ``chunks`` on a helper thread so network reads overlap hashing and decryption here."""
    queue: Queue[tuple[bytes | None, BaseException | None]] = Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        queue.put((chunk, None), timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put((None, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            queue.put((None, exc))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # release the file handle / HTTP connection even when the consumer stopped early

    thread = threading.Thread(target=pump, name="cyxwiz-store-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            chunk, error = queue.get()
            if error is not None:
                raise error
            if chunk is None:
                return
            yield chunk
    finally:
        stop.set()


class HashingReader:
    """Hashes stored chunks as they pass (so a failure can still be classified).

    Readers wrap it in :func:`prefetch`, so the hashing runs on the prefetch thread, beside decryption and
    plaintext hashing on the caller's (hashlib releases the GIL on large buffers).
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.sha = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.sha.update(chunk)
            self.size += len(chunk)
            yield chunk


def check_stored(info: ObjectInfo, size: int, sha: str) -> None:
    """The stored (possibly encrypted) bytes are the ones the metadata names."""
    if size != info.stored_size or not hmac.compare_digest(sha, info.stored_sha256):
        raise IntegrityError(
            f"stored bytes do not match their SHA-256 (expected {info.stored_sha256[:16]}…, "
            f"{info.stored_size} bytes; read {sha[:16]}…, {size} bytes)",
            path=info.key,
            rule="D3",
        )


def check_plain(info: ObjectInfo, size: int, sha: str) -> None:
    """The decrypted bytes are the plaintext the uploader hashed."""
    if size != info.size or not hmac.compare_digest(sha, info.sha256):
        raise IntegrityError("decrypted content does not match its SHA-256", path=info.key, rule="D3")


def verified_plaintext(
    info: ObjectInfo, chunks: Iterator[bytes], *, master_key: MasterKey | None, progress: Progress | None
) -> Iterator[bytes]:
    """Yield verified plaintext; raises IntegrityError/DecryptionError before the caller commits."""
    reader = HashingReader(chunks)
    stream = prefetch(iter(reader))
    if not info.encrypted:
        # Plain and stored bytes are the same (from_metadata checked the hashes agree): hash once.
        for chunk in stream:
            if progress is not None:
                progress(reader.size, info.stored_size)
            yield chunk
            if reader.size > info.stored_size:
                break
        check_stored(info, reader.size, reader.sha.hexdigest())
        return
    assert master_key is not None  # the store refuses encrypted objects without a key before reading
    dec = StreamDecryptor(master=master_key, object_key=info.key)
    plain = hashlib.sha256()
    plain_size = 0
    try:
        for chunk in stream:
            out = dec.feed(chunk)
            plain.update(out)
            plain_size += len(out)
            if progress is not None:
                progress(reader.size, info.stored_size)
            if out:
                yield out
            if reader.size > info.stored_size:
                break
        check_stored(info, reader.size, reader.sha.hexdigest())
        out = dec.finish()
        plain.update(out)
        plain_size += len(out)
        yield out
    except DecryptionError as exc:
        # Altered bytes are an integrity failure; intact bytes that do not decrypt mean a wrong key.
        for _ in stream:  # the rest of the stored bytes, hashed on the prefetch thread
            pass
        check_stored(info, reader.size, reader.sha.hexdigest())
        raise exc from None
    check_plain(info, plain_size, plain.hexdigest())
