"""Per-job manifests (SPEC D3): what a job's prefix should hold, tagged with the master key, and the
verification that compares the stored objects with them.

A manifest is an ordinary object (``jobs/<id>/manifest.json``) that only the store writes. Its tag is an
HMAC under the master key over the canonical JSON of its entries, so whoever can write the bucket but
lacks the key can neither add nor hide an object.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from cyxwiz.errors import CyxwizError, IntegrityError
from cyxwiz.storage import layout
from cyxwiz.storage.crypto import MasterKey
from cyxwiz.storage.model import ObjectInfo, Problem, VerifyReport

Entries = dict[str, dict[str, object]]


def manifest_mac(master_key: MasterKey | None, objects: Entries) -> str | None:
    if master_key is None:
        return None
    body = json.dumps(objects, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return master_key.mac(b"cyxwiz-manifest-v1\n" + body)


def parse_manifest(raw: bytes, *, manifest_key: str, master_key: MasterKey | None) -> Entries:
    """Entries of a manifest's bytes after checking its shape and tag."""
    try:
        doc = json.loads(raw)
        objects = doc["objects"]
        if doc.get("v") != 1 or not isinstance(objects, dict):
            raise ValueError("shape")
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("manifest is malformed", path=manifest_key, rule="D3") from None
    expected = manifest_mac(master_key, objects)
    if expected is not None and not hmac.compare_digest(str(doc.get("tag")), expected):
        raise IntegrityError("manifest tag does not match", path=manifest_key, rule="D3")
    return objects


def updated_manifest(
    objects: Entries, *, key: str, info: ObjectInfo | None, master_key: MasterKey | None
) -> bytes:
    """The manifest's new bytes with ``key`` entered (``info``) or removed (None); ``objects`` changes."""
    if info is not None:
        objects[key] = {
            "sha256": info.sha256,
            "size": info.size,
            "stored_sha256": info.stored_sha256,
            "stored_size": info.stored_size,
            "enc": info.encryption,
        }
    else:
        objects.pop(key, None)
    return json.dumps(
        {"v": 1, "objects": objects, "tag": manifest_mac(master_key, objects)}, sort_keys=True, indent=1
    ).encode("utf-8")


def verify_against_manifests(
    prefix: str,
    *,
    keys: list[str],
    check: Callable[[str], ObjectInfo],
    read_manifest: Callable[[str], Entries],
) -> VerifyReport:
    """Check every object of ``keys`` end to end and compare it with its manifest; collect, never raise."""
    checked: list[ObjectInfo] = []
    problems: list[Problem] = []
    manifests: dict[str, Entries | None] = {}
    for key in keys:
        manifest_key = layout.manifest_for(key)
        if manifest_key is not None and manifest_key not in manifests:
            try:
                manifests[manifest_key] = read_manifest(manifest_key)
            except CyxwizError as exc:
                manifests[manifest_key] = None
                problems.append(Problem(manifest_key, exc.code, str(exc)))
        if layout.is_manifest(key):
            continue
        try:
            info = check(key)
        except CyxwizError as exc:
            problems.append(Problem(key, exc.code, str(exc)))
            continue
        checked.append(info)
        entries = manifests.get(manifest_key) if manifest_key else None
        if entries is None:
            continue
        entry = entries.get(key)
        if entry is None:
            problems.append(Problem(key, "unlisted", "object is not in its manifest"))
        elif entry.get("sha256") != info.sha256 or entry.get("stored_sha256") != info.stored_sha256:
            problems.append(Problem(key, "manifest-mismatch", "object hash differs from its manifest"))
    present = set(keys)
    for entries in manifests.values():
        for key in sorted(entries or {}):
            if key.startswith(prefix) and key not in present:
                problems.append(Problem(key, "missing", "listed in the manifest but not stored"))
    return VerifyReport(prefix=prefix, checked=tuple(checked), problems=tuple(problems))
