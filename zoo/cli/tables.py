"""Tables of per-input values (latent codes, scores, cluster indices) as .npy, .json or .csv files.

``zoo encode`` and ``zoo cluster`` write them with :func:`write_table`; ``zoo decode`` reads
codes back with :func:`read_table`, so ``zoo encode`` then ``zoo decode`` round-trips in
every format.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

#: The formats a table file may have, by suffix.
TABLE_FORMATS = (".npy", ".json", ".csv")


def table_files(out: Path, paths: list[Path]) -> list[Path]:
    """The files a table written to ``out`` for ``paths`` takes: ``out``, and its .txt list of inputs for .npy.

    Refuses a suffix that is not a table format, and (for .npy) an input name that a
    line-per-input list cannot hold.
    """
    suffix = out.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise click.UsageError(f"--out {out}: name a {', '.join(TABLE_FORMATS)} file")
    if suffix != ".npy":
        return [out]
    sidecar = out.with_suffix(".txt")
    bad = next((p for p in paths if "\n" in str(p) or "\r" in str(p)), None)
    if bad is not None:
        raise click.ClickException(f"{bad!r}: a file name with a line break cannot be listed in {sidecar}; "
                                   "use --out with .json or .csv")
    return [out, sidecar]


def write_table(out: Path, files: list[str], values, columns: list[str], meta: dict[str, Any]) -> list[Path]:
    """Write ``values`` ((N,) or (N, K), row i for ``files[i]``) to ``out`` by its suffix; the paths written.

    Float values are stored as float32, integer ones (cluster indices) as int64. .npy: the
    array, and ``out`` with .txt listing the files one per line; .json: an object with
    ``columns``, ``files`` and ``values``; .csv: a header (``file`` and the columns), one row
    per file. Floats are written so that reading them back as float32 gives the same values;
    NaN and infinities are null in JSON and nan/inf in CSV.
    """
    from zoo.images import write_bytes

    values = np.asarray(values)
    values = values.astype(np.int64 if np.issubdtype(values.dtype, np.integer) else np.float32)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(values))
        sidecar = out.with_suffix(".txt")
        write_bytes(out, buffer.getvalue())
        write_bytes(sidecar, "".join(f"{f}\n" for f in files).encode())
        return [out, sidecar]
    # str() of a float32 is its shortest decimal that reads back as the same float32
    rows = [[str(v) for v in row] for row in values.reshape(len(files), -1)]
    if suffix == ".json":
        number = int if values.dtype == np.int64 else float
        clean = [[number(v) if math.isfinite(float(v)) else None for v in row] for row in rows]
        body = {**meta, "columns": columns, "files": files,
                "values": clean if values.ndim == 2 else [row[0] for row in clean]}
        write_bytes(out, (json.dumps(body) + "\n").encode())
        return [out]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", *columns])
    writer.writerows([f, *row] for f, row in zip(files, rows))
    write_bytes(out, text.getvalue().encode())
    return [out]


@dataclass
class Table:
    """Rows read from a table file: ``values`` (N, K) float32, and the input each row came from, if listed."""

    values: np.ndarray
    files: list[str] | None


class TableError(click.ClickException):
    """A table file that cannot be read as rows of numbers."""


def read_table(path: Path) -> Table:
    """Read a table written by :func:`write_table` (or by hand in the same layout), naming what is wrong.

    .npy: a numeric array (N, K), read without pickle; its list of inputs is ``path`` with
    .txt when that file exists. .json: ``values`` (a list of rows) and optionally ``files``.
    .csv: a header row whose first column is ``file``, then one row per input; or rows of
    numbers only. A flat array or list is one column: one value per input.
    """
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise click.UsageError(f"{path}: a table is a {', '.join(TABLE_FORMATS)} file")
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    try:
        rows, files = {".npy": _read_npy, ".json": _read_json, ".csv": _read_csv}[suffix](path)
        values = np.asarray(rows, dtype=np.float32)
    except TableError:
        raise
    except (ValueError, TypeError, OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise TableError(f"{path}: not a table of numbers ({exc})") from None
    if values.ndim == 1:  # one value per input, as write_table writes a scalar task's table
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise TableError(f"{path}: expected rows of numbers, got an array of shape {tuple(values.shape)}")
    if files is not None and len(files) != len(values):
        raise TableError(f"{path}: {len(values)} rows but {len(files)} file names")
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, col = bad[0].tolist()
        where = files[row] if files else f"row {row}"
        raise TableError(f"{path}: {where}, column {col} is {values[row, col]}; every value must be finite")
    return Table(values, files)


def _read_npy(path: Path):
    array = np.load(path, allow_pickle=False)
    if array.dtype.kind not in "iuf":  # integers or floats; not text, objects or complex numbers
        raise TableError(f"{path}: holds {array.dtype} values, not numbers")
    sidecar = path.with_suffix(".txt")
    files = sidecar.read_text().splitlines() if sidecar.is_file() else None
    return array, files


def _read_json(path: Path):
    body = json.loads(path.read_text())
    if not isinstance(body, dict) or "values" not in body:
        raise TableError(f'{path}: expected an object with "values" (and optionally "files"), as `zoo encode` writes')
    files = body.get("files")
    if files is not None and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        raise TableError(f'{path}: "files" must be a list of strings')
    rows = body["values"]
    if not isinstance(rows, list) or any(v is None or isinstance(v, (str, bool, dict)) for row in rows
                                         for v in (row if isinstance(row, list) else [row])):
        raise TableError(f'{path}: "values" must be a list of rows of numbers (null is not a number)')
    return rows, files


def _read_csv(path: Path):
    rows = [row for row in csv.reader(io.StringIO(path.read_text())) if row]
    if not rows:
        raise TableError(f"{path}: the file is empty")
    if rows[0] and rows[0][0] == "file":
        return [row[1:] for row in rows[1:]], [row[0] for row in rows[1:]]
    return rows, None
