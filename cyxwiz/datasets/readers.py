"""Turn a dataset file's bytes into arrays without trusting them (SPEC G1, threat DoS).

* ``.npz``: a zip of ``x`` (or ``X``) and ``y`` only, read with ``allow_pickle=False`` (a pickle would
  be code); the archive's declared sizes are bounded before anything is decompressed.
* ``.csv``: UTF-8, a header row naming the columns, the label column named in the spec, every other
  column a number; a row with another field count than the header (a truncated file) is refused.

Every refusal is a :class:`ValidationError` (``error: <field>: <rule>``), never a numpy or zip traceback.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile

import numpy as np

from cyxwiz.datasets.checks import DatasetLimits, check_rows
from cyxwiz.datasets.refs import DatasetRef
from cyxwiz.errors import ValidationError

_NPZ_X = ("x.npy", "X.npy")


def read_arrays(
    data: bytes, ref: DatasetRef, limits: DatasetLimits, *, field: str
) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of a model job's dataset file."""
    if not data:
        raise ValidationError("the file is empty", field=field, rule="G1")
    if ref.format == "npz":
        return read_npz(data, limits, field=field)
    if ref.format == "csv":
        assert ref.label_column is not None
        return read_csv(data, ref.label_column, limits, field=field)
    raise ValidationError(f"format {ref.format!r} holds no arrays", field=f"{field}.format", rule="G1")


def read_npz(data: bytes, limits: DatasetLimits, *, field: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ValidationError("not a .npz archive, or a truncated one", field=field, rule="G1") from None
    with archive:
        names = sorted(archive.namelist())
        xs = [n for n in names if n in _NPZ_X]
        if len(xs) != 1 or "y.npy" not in names or len(names) != 2:
            raise ValidationError(
                f"an .npz dataset holds exactly the arrays x (or X) and y; it holds {names[:8]}",
                field=field,
                rule="G1",
            )
        unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > limits.max_unpacked_bytes:
            raise ValidationError(
                f"arrays unpack to {unpacked} bytes; the limit is {limits.max_unpacked_bytes}",
                field=field,
                rule="G1",
            )
        try:
            x = _array(archive, xs[0])
            y = _array(archive, "y.npy")
        except ValueError as exc:
            raise ValidationError(f"unreadable array: {exc}", field=field, rule="G1") from None
        except (zipfile.BadZipFile, OSError, EOFError):
            raise ValidationError("a member is truncated or corrupt", field=field, rule="G1") from None
    return x, y


def _array(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    declared = archive.getinfo(name).file_size  # zipfile never reads a member past this size
    with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if dtype.hasobject:
            # An object array is a pickle: code, not data.
            raise ValueError("object arrays (pickles) are refused")
        nbytes = math.prod(shape) * dtype.itemsize
        # The header's shape is checked against the member's size before anything is allocated.
        if nbytes > declared:
            raise ValueError(f"header declares {nbytes} bytes of data in a {declared}-byte member")
        raw = member.read(nbytes)
    if len(raw) != nbytes:
        raise ValueError("array data is truncated")
    flat: np.ndarray = np.frombuffer(raw, dtype=dtype)
    shaped: np.ndarray = flat.reshape(tuple(shape), order="F" if fortran else "C")
    return np.ascontiguousarray(shaped)


def read_csv(
    data: bytes, label_column: str, limits: DatasetLimits, *, field: str
) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"not UTF-8 text (byte {exc.start})", field=field, rule="G1") from None
    if "\x00" in text:
        raise ValidationError("holds NUL bytes (not a CSV file)", field=field, rule="G1")
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(rows)
    except StopIteration:
        raise ValidationError("the file is empty", field=field, rule="G1") from None
    except csv.Error as exc:
        raise ValidationError(f"bad CSV header: {exc}", field=field, rule="G1") from None
    header = [name.strip() for name in header]
    if len(set(header)) != len(header):
        raise ValidationError("column names repeat", field=field, rule="G1")
    if label_column not in header:
        raise ValidationError(
            f"no column {label_column!r} in the header", field=f"{field}.label_column", rule="G1"
        )
    if len(header) < 2:
        raise ValidationError("needs the label column and at least one feature", field=field, rule="G1")
    label_at = header.index(label_column)
    width = len(header)
    features: list[list[float]] = []
    labels: list[int] = []
    try:
        for number, row in enumerate(rows, start=2):
            if not row:
                continue  # blank lines (a trailing newline) carry nothing
            if len(row) != width:
                raise ValidationError(
                    f"line {number} has {len(row)} fields, the header {width} (truncated or ragged file)",
                    field=field,
                    rule="G1",
                )
            if len(labels) >= limits.max_rows:
                raise ValidationError(f"more than {limits.max_rows} rows", field=field, rule="G1")
            labels.append(_label(row[label_at], number, field))
            features.append([_number(v, number, field) for i, v in enumerate(row) if i != label_at])
    except csv.Error as exc:
        raise ValidationError(f"bad CSV: {exc}", field=field, rule="G1") from None
    check_rows(len(labels), limits, field=field)
    return np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64)


def _label(value: str, line: int, field: str) -> int:
    text = value.strip()
    try:
        label = int(text, 10)
    except ValueError:
        raise ValidationError(
            f"line {line}: label {text[:32]!r} is not an integer", field=f"{field}.label_column", rule="G1"
        ) from None
    if not -(2**62) <= label <= 2**62:
        raise ValidationError(f"line {line}: label out of range", field=f"{field}.label_column", rule="G1")
    return label


def _number(value: str, line: int, field: str) -> float:
    text = value.strip()
    try:
        # float() accepts "nan"/"inf": those are refused with the other non-finite values later.
        return float(text)
    except ValueError:
        raise ValidationError(f"line {line}: {text[:32]!r} is not a number", field=field, rule="G1") from None
