"""Load a dataset from a file, a ``datasets.save_to_disk`` folder or the hub, and validate it.

``spec`` forms (checked in this order):

- an existing folder: a ``datasets.save_to_disk`` folder (``Dataset`` or ``DatasetDict``; ``split`` picks
  the split of a ``DatasetDict``);
- an existing file: ``.jsonl`` (read line by line so errors name the line), ``.json`` (a list of objects,
  ``{"data": [...]}``, or JSON lines), ``.parquet``, ``.csv`` (values that look like JSON lists are parsed;
  ``label`` accepts true/false/1/0; an empty ``margin`` cell means no margin);
- a missing path that cannot be a hub id (a file extension such as ``.jsonl``/``.txt``, a leading
  ``.``/``/``/``~``, a trailing ``/``, more than one ``/``): ``no such file``;
- anything else (``name`` or ``org/name``) is taken as a hub id for ``datasets.load_dataset`` (only when
  online; with ``HF_HUB_OFFLINE=1`` or ``HF_DATASETS_OFFLINE=1`` it is a one-line DataError).

Every problem is a one-line :class:`~posttrain.errors.DataError` (``FILE: ...`` or ``FILE:ROW: ...``);
pyarrow / datasets exceptions are wrapped into one line. Row numbers are the file line numbers for ``.jsonl``
and ``.csv`` (the header is line 1; a csv row is numbered by the line it starts on) and the row index + 1
otherwise. ``answer`` values that are numbers are turned into text (``42`` ->
``"42"``) after validation; nothing else is changed.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from posttrain.data.formats import KINDS, is_messages
from posttrain.data.validate import validate_rows
from posttrain.errors import DataError

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_FILE_SUFFIX = re.compile(r"\.[A-Za-z]{1,7}$")  # "data.txt" is a missing file, not a hub id


@dataclass
class Rows:
    """Validated rows of one kind. ``source`` is the display name used in error messages."""

    rows: list[dict]
    kind: str
    source: str
    row_numbers: list[int] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    def row_number(self, i: int) -> int:
        """The number shown in messages for ``rows[i]`` (jsonl / csv line number, else ``i + 1``)."""
        return self.row_numbers[i] if self.row_numbers else i + 1


def load_rows(spec: str | os.PathLike, *, kinds: Sequence[str] | None = None, split: str = "train") -> Rows:
    """Read, validate and return the rows of ``spec`` (see the module docstring for the forms).

    ``kinds`` restricts the accepted kinds (e.g. ``["preference"]`` for DPO); the first matching kind in
    :data:`posttrain.data.formats.KINDS` order is used.
    """
    if kinds is not None:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown dataset kind(s) {unknown}; expected one of {list(KINDS)}")
    spec = os.fspath(spec)
    path = Path(spec)
    if path.is_dir():
        source = spec if spec.endswith("/") else spec + "/"
        rows = _read_dataset_dir(path, source, split)
        numbers = None
    elif path.is_file():
        source = spec
        rows, numbers = _read_file(path, source)
    elif path.suffix.lower() in EXTENSIONS or _looks_like_path(spec):
        raise DataError("no such file", file=spec)
    else:
        source = spec
        rows = _read_hub(spec, split)
        numbers = None
    kind = validate_rows(rows, source=source, kinds=kinds, row_numbers=numbers)
    if kind == "verifiable":
        for r in rows:
            if not isinstance(r["answer"], str):
                r["answer"] = _number_text(r["answer"])
    return Rows(rows=rows, kind=kind, source=source, row_numbers=numbers or [])


def _looks_like_path(spec: str) -> bool:
    """A spec that cannot be a hub id (``org/name`` or ``name``) is reported as a missing file."""
    return (spec.startswith((".", "/", "~")) or spec.endswith("/") or spec.count("/") > 1
            or "\\" in spec or not _HUB_ID.match(spec) or _FILE_SUFFIX.search(spec) is not None)


def _number_text(x: int | float) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _one_line(e: BaseException, limit: int = 200) -> str:
    msg = " ".join(str(e).split()) or "no details"
    if len(msg) > limit:
        msg = msg[: limit - 3] + "..."
    return f"{type(e).__name__}: {msg}"


# --------------------------------------------------------------------------------------------------
# files


def _read_file(path: Path, source: str) -> tuple[list, list[int] | None]:
    ext = path.suffix.lower()
    if ext == ".jsonl":
        return _read_jsonl(path, source)
    if ext == ".json":
        return _read_json(path, source), None
    if ext == ".parquet":
        return _read_parquet(path, source), None
    if ext == ".csv":
        return _read_csv(path, source)
    shown = ext or "no extension"
    raise DataError(f"unknown file type '{shown}' (expected .jsonl, .json, .parquet, .csv, "
                    "a datasets folder or a hub id)", file=source)


def _read_jsonl(path: Path, source: str) -> tuple[list, list[int]]:
    rows: list = []
    numbers: list[int] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise DataError("not valid UTF-8", file=source, row=lineno) from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg} at col {e.colno})", file=source,
                                row=lineno) from None
            numbers.append(lineno)
    if not rows:
        raise DataError("file is empty", file=source)
    return rows, numbers


def _read_json(path: Path, source: str) -> list:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError("not valid UTF-8", file=source) from None
    if not text.strip():
        raise DataError("file is empty", file=source)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines in a .json file (as `datasets` accepts)
            return _read_jsonl(path, source)[0]
        raise DataError(f"not valid JSON ({e.msg} at col {e.colno})", file=source, row=e.lineno) from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        got = "an object without a 'data' list" if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"expected a list of objects or {{\"data\": [...]}}, got {got}", file=source)
    if not obj:
        raise DataError("file is empty", file=source)
    return obj


def _read_parquet(path: Path, source: str) -> list:
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises many types; all become one line
        raise DataError(f"cannot read parquet file ({_one_line(e)})", file=source) from None
    if not rows:
        raise DataError("file is empty", file=source)
    return rows


_LIST_COLUMNS = ("messages", "completions", "ranking")
_MAYBE_MESSAGES = ("prompt", "completion", "chosen", "rejected")


def _read_csv(path: Path, source: str) -> tuple[list, list[int]]:
    """Rows and, for each, the file line it starts on (the header is line 1; a quoted cell may span
    several lines, so this is not the record index + 1)."""
    rows: list[dict] = []
    numbers: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError("file is empty", file=source)
            start = reader.line_num + 1  # the line the next record starts on
            for cells in reader:
                lineno, start = start, reader.line_num + 1
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise DataError(f"row has {len(cells)} fields, header has {len(header)}",
                                    file=source, row=lineno)
                rows.append(_coerce_csv(dict(zip(header, cells))))
                numbers.append(lineno)
    except UnicodeDecodeError:
        raise DataError("not valid UTF-8", file=source) from None
    except csv.Error as e:
        raise DataError(f"cannot read csv file ({_one_line(e)})", file=source) from None
    if not rows:
        raise DataError("file is empty", file=source)
    return rows, numbers


def _coerce_csv(row: dict[str, Any]) -> dict[str, Any]:
    """CSV cells are strings: parse JSON lists, booleans and numbers where the column calls for them."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in _LIST_COLUMNS or k in _MAYBE_MESSAGES:
            s = v.strip()
            if s.startswith("["):
                try:
                    parsed = json.loads(s)
                except json.JSONDecodeError:
                    parsed = None
                if k in _LIST_COLUMNS and isinstance(parsed, list):
                    v = parsed
                elif is_messages(parsed):
                    v = parsed
        elif k == "label":
            s = v.strip().lower()
            v = {"true": True, "false": False, "1": True, "0": False}.get(s, v)
        elif k == "margin":
            if not v.strip():
                continue  # no margin for this row
            try:
                v = float(v)
            except ValueError:
                pass
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------------
# datasets folders and the hub


def _read_dataset_dir(path: Path, source: str, split: str) -> list:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).is_file() for m in markers):
        raise DataError("not a dataset folder", file=source)
    try:
        import datasets

        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"cannot read dataset folder ({_one_line(e)})", file=source) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"no split {split!r} (available: {', '.join(ds)})", file=source)
        ds = ds[split]
    if len(ds) == 0:
        raise DataError("dataset is empty", file=source)
    return ds.to_list()


def hub_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _read_hub(spec: str, split: str) -> list:
    if hub_offline():
        raise DataError("not a local file or folder, and the hub is offline (HF_HUB_OFFLINE=1)", file=spec)
    try:
        import datasets

        ds = datasets.load_dataset(spec, split=split)
    except Exception as e:
        raise DataError(f"cannot load from the hub ({_one_line(e)})", file=spec) from None
    if len(ds) == 0:
        raise DataError("dataset is empty", file=spec)
    return ds.to_list()
