"""Finding and reading source files: Parquet or CSV, long format or one file per recording.

:func:`list_sources` turns a file, folder, glob or fsspec URL into a sorted list of files.
:func:`read_source` reads one file with pyarrow (column projection, typed conversion, ids read as
a dictionary so grouping works on integer codes) and returns a :class:`SourcePart`: the file's
recordings as one float32 block plus offsets, grouped by recording and sorted by time, together
with every problem found. A file that cannot be read becomes a ``file`` issue, never an
exception, so one corrupt file does not stop the others.

Known shortcoming: the rows of a Parquet file whose footer is itself broken cannot be counted
or attributed to recordings, so such a file is quarantined whole with 0 rows in the accounting.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from sensorlstm.config import DataConfig
from sensorlstm.quarantine import Issue

logger = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".txt")
_GLOB_CHARS = "*?["


@dataclass
class SourcePart:
    """The recordings of one source file, grouped and sorted, before fleet-wide validation.

    Attributes:
        source: the file path or URL.
        rows_in: data rows in the file; for a file that could not be parsed, what could be
            counted (the Parquet footer's row count, a CSV's non-blank lines minus the header),
            else 0.
        ids: recording ids, in the order of the blocks in ``values``.
        offsets: int64 ``(len(ids) + 1,)`` row offsets into ``values``.
        values: float32 ``(rows, len(channels))``; NaN where a cell was empty or non-numeric.
        channels: the channel columns found in this file.
        labels: float32 ``(rows,)`` raw labels (NaN when missing), or None without a label column.
        timestamps: float64 ``(rows,)`` seconds (NaN when unparsable), or None.
        flags: recording-level problems found while reading (the recording is quarantined).
        issues: file- or row-level rejections already counted (rows no longer in ``values``).
        warnings: findings that keep the data.
        rejected_ids: recordings known to have rows in this file when the whole file was
            rejected; their rows in other files are quarantined too (no partial recordings).
    """

    source: str
    rows_in: int
    ids: list[str] = field(default_factory=list)
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    channels: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    flags: list[Issue] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    rejected_ids: list[str] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        """Rows still held (``rows_in`` minus rows rejected while reading)."""
        return int(self.offsets[-1])


# -- listing -----------------------------------------------------------------------------------


def list_sources(source: str | Sequence[str], cfg: DataConfig) -> list[str]:
    """Every data file under a file, folder, glob or fsspec URL (or a list of them), sorted.

    Folders are searched recursively for files whose suffix matches ``cfg.format`` (Parquet and
    CSV for ``auto``); hidden files and ones starting with ``_`` (``_SUCCESS``) are skipped.

    Args:
        source: a path or URL (``file://``, ``memory://``, ``s3://`` with ``s3fs``), or several.
        cfg: the data config (for the format).

    Returns:
        File paths, or URLs when the source was given as a URL, sorted and without duplicates.

    Raises:
        FileNotFoundError: a source matches no file (the message names it).
    """
    sources = [source] if isinstance(source, str) else list(source)
    found: list[str] = []
    for src in sources:
        fs, root = fsspec.core.url_to_fs(src)
        if any(ch in root for ch in _GLOB_CHARS):
            candidates = [p for p in fs.glob(root) if not fs.isdir(p)]
        elif fs.isdir(root):
            candidates = fs.find(root)
        elif fs.exists(root):
            candidates = [root]  # an explicitly named file is taken whatever its suffix
        else:
            raise FileNotFoundError(
                f"data source {src!r} does not exist; expected a file, folder, glob or URL "
                "(check data.path / --data)"
            )
        if len(candidates) != 1 or candidates[0] != root:
            candidates = [p for p in candidates if _wanted(p, cfg)]
        kept = [p for p in candidates if not _excluded(p, cfg)]
        if not kept:
            excluded = f" left after data.exclude {cfg.exclude}" if candidates else ""
            raise FileNotFoundError(
                f"data source {src!r} holds no {_suffix_text(cfg)} files{excluded}; "
                "check the path, data.format and data.exclude"
            )
        if len(kept) < len(candidates):
            logger.info(
                "%s: %d of %d files left out by data.exclude %s",
                src,
                len(candidates) - len(kept),
                len(candidates),
                cfg.exclude,
            )
        candidates = kept
        as_url = "://" in src
        found.extend(fs.unstrip_protocol(p) if as_url else p for p in candidates)
    return sorted(set(found))


def _wanted(path: str, cfg: DataConfig) -> bool:
    name = PurePosixPath(path).name
    if name.startswith((".", "_")):
        return False
    return file_format(path, cfg) is not None


def _excluded(path: str, cfg: DataConfig) -> bool:
    """Whether ``path`` matches one of the ``data.exclude`` patterns (``*`` crosses folders)."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in cfg.exclude)


def _suffix_text(cfg: DataConfig) -> str:
    return {"auto": "Parquet or CSV", "parquet": "Parquet", "csv": "CSV"}[cfg.format]


def file_format(path: str, cfg: DataConfig) -> str | None:
    """``parquet`` or ``csv`` from ``cfg.format`` or the suffix; None for other files."""
    lower = path.lower()
    is_parquet = lower.endswith(PARQUET_SUFFIXES)
    is_csv = lower.endswith(CSV_SUFFIXES)
    if cfg.format == "parquet":
        return "parquet" if is_parquet else None
    if cfg.format == "csv":
        return "csv" if is_csv else None
    return "parquet" if is_parquet else "csv" if is_csv else None


def recording_id_from_path(path: str) -> str:
    """The id of a one-recording-per-file source: ``<parent folder>/<stem>``.

    The parent folder is kept because fleets reuse stems across folders (SKAB's ``valve1/0.csv``
    and ``valve2/0.csv``).
    """
    p = PurePosixPath(path.split("://", 1)[-1])
    stem = p.name
    for suffix in sorted(PARQUET_SUFFIXES + CSV_SUFFIXES, key=len, reverse=True):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{p.parent.name}/{stem}" if p.parent.name else stem


# -- reading -----------------------------------------------------------------------------------


def read_source(path: str, cfg: DataConfig) -> SourcePart:
    """Read one file into a :class:`SourcePart`; failures become issues, not exceptions.

    Args:
        path: a path or URL from :func:`list_sources`.
        cfg: the data config (column mapping, CSV separator, timestamp format, layout).

    Returns:
        The file's recordings grouped by id and sorted by time, plus what was found wrong.
    """
    try:
        fs, fpath = fsspec.core.url_to_fs(path)
        size = fs.size(fpath)
    except (OSError, ValueError) as exc:
        return _failed(path, "unreadable_file", f"cannot open the file: {exc}")
    if not size:
        return _failed(path, "empty_file", "the file is 0 bytes; expected a header and rows")
    fmt = file_format(path, cfg) or ("csv" if cfg.format == "csv" else "parquet")
    try:
        table = _read_parquet(fs, fpath, cfg) if fmt == "parquet" else _read_csv(fs, fpath, cfg)
    except _READ_ERRORS as exc:
        rows, counted = _count_rows(fs, fpath, fmt)
        return _failed(
            path,
            "unreadable_file",
            f"cannot read it as {fmt}: {exc}; is the file complete? ({rows} rows, {counted})",
            rows,
            _salvage_ids(fs, fpath, path, fmt, cfg),
        )
    return table_to_part(table, path, cfg)


#: What a broken file raises while pyarrow parses it.
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, UnicodeDecodeError)


def _failed(
    path: str, reason: str, detail: str, rows: int = 0, ids: Sequence[str] = ()
) -> SourcePart:
    """A part that holds no data, only the file-level issue (``rows`` rows are quarantined)."""
    logger.warning("%s: %s (%s)", path, reason, detail)
    return SourcePart(
        source=path,
        rows_in=rows,
        issues=[Issue(path, None, reason, None, detail, rows, "file")],
        rejected_ids=list(ids),
    )


def _count_rows(fs: fsspec.AbstractFileSystem, fpath: str, fmt: str) -> tuple[int, str]:
    """Data rows of a file pyarrow could not parse, as far as they can be counted.

    Returns the count and how it was found, for the quarantine detail. Parquet: the footer's
    row count (0 when the footer itself is broken). CSV: non-blank lines minus the header (a
    quoted field spanning lines counts once per line).
    """
    try:
        if fmt == "parquet":
            with fs.open(fpath, "rb") as handle:
                return pq.read_metadata(handle).num_rows, "counted from the Parquet footer"
        with fs.open(fpath, "rb", compression="infer") as handle:
            lines = sum(1 for line in handle if line.strip())
        return max(lines - 1, 0), "counted as non-blank lines after the header"
    except _READ_ERRORS:
        return 0, "as they could not be counted"


def _salvage_ids(
    fs: fsspec.AbstractFileSystem, fpath: str, path: str, fmt: str, cfg: DataConfig
) -> list[str]:
    """Recording ids of a file that could not be read whole: its id column if that alone
    reads (skipping malformed CSV lines), else the file's own id with ``layout: per_file``."""
    id_col = cfg.columns.recording_id
    try:
        if fmt == "parquet":
            with fs.open(fpath, "rb") as handle:
                column = pq.ParquetFile(handle).read(columns=[id_col]).column(0)
        else:
            parse = pacsv.ParseOptions(
                delimiter=cfg.csv_separator, invalid_row_handler=lambda _row: "skip"
            )
            convert = pacsv.ConvertOptions(
                include_columns=[id_col], column_types={id_col: pa.string()}
            )
            with fs.open(fpath, "rb", compression="infer") as handle:
                column = pacsv.read_csv(handle, parse_options=parse, convert_options=convert)[0]
    except (*_READ_ERRORS, KeyError, IndexError):
        return [recording_id_from_path(path)] if cfg.layout == "per_file" else []
    ids = pc.unique(pc.cast(column, pa.string())).to_pylist()
    return sorted(str(i) for i in ids if i is not None and str(i).strip())


def _read_parquet(fs: fsspec.AbstractFileSystem, fpath: str, cfg: DataConfig) -> pa.Table:
    local = isinstance(fs, LocalFileSystem)
    handle = fpath if local else fs.open(fpath, "rb")
    try:
        schema = pq.read_schema(handle)
        columns = _projection(schema.names, cfg)
        id_col = cfg.columns.recording_id
        dictionary = (
            [id_col] if id_col in schema.names and _is_string(schema.field(id_col)) else []
        )
        parquet = pq.ParquetFile(handle, read_dictionary=dictionary, memory_map=local)
        return parquet.read(columns=columns, use_threads=True)
    finally:
        if not local:
            handle.close()


def _read_csv(fs: fsspec.AbstractFileSystem, fpath: str, cfg: DataConfig) -> pa.Table:
    """Read the columns :func:`_projection` wants (others are never parsed), ids as a dictionary.

    A column whose type pyarrow inferred from the first block can fail on a bad cell further
    down; the file is then read again with every wanted column as text, so the typed
    conversion in :func:`table_to_part` can name the bad cells.
    """
    parse = pacsv.ParseOptions(delimiter=cfg.csv_separator)
    id_col = cfg.columns.recording_id
    include = _projection(_csv_header(fs, fpath, parse), cfg)
    types: dict[str, pa.DataType] = {id_col: pa.dictionary(pa.int32(), pa.string())}
    try:
        return _read_csv_columns(fs, fpath, parse, include, types)
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc).lower():
            raise
    types.update({name: pa.string() for name in include if name != id_col})
    return _read_csv_columns(fs, fpath, parse, include, types)


def _csv_header(fs: fsspec.AbstractFileSystem, fpath: str, parse: pacsv.ParseOptions) -> list[str]:
    """The CSV's column names (pyarrow parses only its first block, in this thread)."""
    with fs.open(fpath, "rb", compression="infer") as handle:
        reader = pacsv.open_csv(
            handle, read_options=pacsv.ReadOptions(use_threads=False), parse_options=parse
        )
        names = reader.schema.names
        reader.close()
    return names


def _read_csv_columns(
    fs: fsspec.AbstractFileSystem,
    fpath: str,
    parse: pacsv.ParseOptions,
    include: list[str],
    types: dict[str, pa.DataType],
) -> pa.Table:
    convert = pacsv.ConvertOptions(
        include_columns=include, column_types=types, strings_can_be_null=True
    )
    with fs.open(fpath, "rb", compression="infer") as handle:
        return pacsv.read_csv(handle, parse_options=parse, convert_options=convert)


def _projection(names: Sequence[str], cfg: DataConfig) -> list[str]:
    """Columns to read: the contract's columns when channels are named, else all but ignored."""
    cols = cfg.columns
    if cols.channels is None:
        return [n for n in names if n not in cols.ignore]
    wanted = {cols.recording_id, cols.timestamp, cols.label, *cols.channels}
    return [n for n in names if n in wanted]


def _is_string(f: pa.Field) -> bool:
    return pa.types.is_string(f.type) or pa.types.is_large_string(f.type)


# -- typed conversion and grouping -------------------------------------------------------------


def table_to_part(table: pa.Table, path: str, cfg: DataConfig) -> SourcePart:
    """Validate a file's columns, convert them to typed arrays and group rows by recording."""
    cols = cfg.columns
    names = table.column_names
    rows_in = table.num_rows
    if rows_in == 0:
        return _failed(path, "empty_file", "no data rows (header only?)")

    # -- required columns ----------------------------------------------------------------------
    has_id = cols.recording_id in names
    if not has_id and cfg.layout == "long":
        return _failed(
            path,
            "missing_column",
            f"expected a recording id column {cols.recording_id!r}, got columns {names}; "
            "set data.columns.recording_id or data.layout: per_file",
            rows_in,
        )
    if cols.timestamp is not None and cols.timestamp not in names:
        return _failed(
            path,
            "missing_column",
            f"expected a timestamp column {cols.timestamp!r}, got columns {names}; "
            "set data.columns.timestamp (or null to use the row order)",
            rows_in,
            _ids_in(table, path, cfg, has_id),
        )
    reserved = {cols.recording_id, cols.timestamp, cols.label, *cols.ignore}
    warnings: list[Issue] = []
    if cols.channels is not None:
        missing = [c for c in cols.channels if c not in names]
        if missing:
            return _failed(
                path,
                "missing_channel",
                f"expected channels {cols.channels}, missing {missing}; "
                "fix the file or data.columns.channels",
                rows_in,
                _ids_in(table, path, cfg, has_id),
            )
        channels = list(cols.channels)
    else:
        channels = [n for n in names if n not in reserved and _is_channel(table.column(n))]
    for extra in (n for n in names if n not in reserved and n not in channels):
        warnings.append(
            Issue(
                path,
                None,
                "unexpected_channel",
                extra,
                _dropped_column_detail(table.column(extra), cfg),
                0,
                "warning",
            )
        )

    # -- recording codes (integers), dropping rows without an id -------------------------------
    codes, dictionary = _recording_codes(table, path, cfg, has_id)
    issues: list[Issue] = []
    keep: np.ndarray | None = None
    if (codes < 0).any():
        keep = np.flatnonzero(codes >= 0)
        n_bad = rows_in - len(keep)
        issues.append(
            Issue(
                path,
                None,
                "missing_recording_id",
                cols.recording_id,
                f"{n_bad} rows have an empty recording id; they were not used",
                n_bad,
                "rows",
            )
        )
        codes = codes[keep]

    # -- timestamps ----------------------------------------------------------------------------
    timestamps = None
    if cols.timestamp is not None:
        timestamps = _timestamp_seconds(table.column(cols.timestamp), cfg)
        if keep is not None:
            timestamps = timestamps[keep]

    # -- group rows by recording and sort by time (a no-op for already ordered files) ----------
    order, unsorted_codes = _grouping_order(codes, timestamps)
    rows = keep if order is None else (order if keep is None else keep[order])
    codes = codes if order is None else codes[order]
    if timestamps is not None and order is not None:
        timestamps = timestamps[order]
    starts = np.concatenate([[0], np.flatnonzero(codes[1:] != codes[:-1]) + 1]).astype(np.int64)
    if len(codes) == 0:
        starts = np.zeros(0, np.int64)
    offsets = np.concatenate([starts, [len(codes)]]).astype(np.int64)
    ids = [dictionary[c] for c in codes[starts]]
    for code in unsorted_codes:
        warnings.append(
            Issue(
                path,
                dictionary[code],
                "unsorted_timestamps",
                cols.timestamp,
                "timestamps decrease within the recording; rows were sorted by time",
                0,
                "warning",
            )
        )

    # -- channel values, float32, one column at a time -----------------------------------------
    flags: list[Issue] = []
    values = np.empty((len(codes), len(channels)), dtype=np.float32)
    plain = [j for j, name in enumerate(channels) if _is_plain_numeric(table.schema.field(name))]
    if rows is None and plain:  # the common case: numeric columns in file order
        _fill_in_blocks(values, table, channels, plain)
    for j, name in enumerate(channels):
        if rows is None and j in plain:
            continue
        column, bad, example = _to_float64(table.column(name))
        values[:, j] = column if rows is None else column[rows]
        if bad is not None:
            bad_rows = bad if rows is None else bad[rows]
            for i in _recordings_with(bad_rows, offsets):
                flags.append(
                    Issue(
                        path,
                        ids[i],
                        "non_numeric",
                        name,
                        f"expected numbers, got text such as {example!r}",
                        0,
                        "recording",
                    )
                )
    if timestamps is not None:
        for i in _recordings_with(np.isnan(timestamps), offsets):
            flags.append(
                Issue(
                    path,
                    ids[i],
                    "bad_timestamp",
                    cols.timestamp,
                    "empty or unparsable timestamps; set data.timestamp_format",
                    0,
                    "recording",
                )
            )

    labels = None
    if cols.label is not None and cols.label in names:
        raw, bad, example = _to_float64(table.column(cols.label))
        labels = (raw if rows is None else raw[rows]).astype(np.float32)
        if bad is not None:
            labels[(bad if rows is None else bad[rows])] = np.float32(2)  # rejected as bad_label

    return SourcePart(
        source=path,
        rows_in=rows_in,
        ids=ids,
        offsets=offsets,
        values=values,
        channels=channels,
        labels=labels,
        timestamps=timestamps,
        flags=flags,
        issues=issues,
        warnings=warnings,
    )


#: Cells of a text column looked at to decide whether it holds numbers.
_SNIFF_CELLS = 4096


def _is_channel(column: pa.ChunkedArray) -> bool:
    """Whether an auto-detected column is a channel: numeric, or text that is mostly numbers.

    Text columns are kept when most of their non-blank cells parse as numbers, so a channel
    with a few bad cells is still found (and its recordings quarantined as ``non_numeric``),
    while metadata such as ``site="X"`` is dropped with an ``unexpected_channel`` warning.
    """
    t = column.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
    ):
        return True
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _numeric_share(column) > 0.5
    return False


def _text_sample(column: pa.ChunkedArray) -> pd.Series:
    """Up to :data:`_SNIFF_CELLS` non-blank cells, spread over the column, stripped."""
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    cells = pc.drop_null(column)
    if len(cells) > _SNIFF_CELLS:
        cells = cells.take(np.linspace(0, len(cells) - 1, _SNIFF_CELLS).astype(np.int64))
    text = pd.Series(cells.to_pylist(), dtype="string").str.strip()
    return text[text != ""]


def _numeric_share(column: pa.ChunkedArray) -> float:
    """Share of a text column's sampled non-blank cells that parse as numbers (0 if none)."""
    text = _text_sample(column)
    if text.empty:
        return 0.0
    return float(pd.to_numeric(text, errors="coerce").notna().mean())


def _dropped_column_detail(column: pa.ChunkedArray, cfg: DataConfig) -> str:
    """Why a column is not a channel, for the ``unexpected_channel`` warning."""
    if cfg.columns.channels is not None:
        return f"not in data.columns.channels {cfg.columns.channels}; column dropped"
    t = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        sample = _text_sample(column)
        got = (
            "a text column with no values"
            if sample.empty
            else f"text such as {sample.iloc[0]!r} (most cells are not numbers)"
        )
        return (
            f"expected a numeric channel, got {got}; column dropped, add it to "
            "data.columns.ignore to silence this warning"
        )
    return (
        f"expected a numeric channel, got type {t}; column dropped, add it to "
        "data.columns.ignore to silence this warning"
    )


def _ids_in(table: pa.Table, path: str, cfg: DataConfig, has_id: bool) -> list[str]:
    """The recording ids a readable file holds (for a file rejected as a whole)."""
    if not has_id and cfg.layout != "per_file":
        return []
    codes, dictionary = _recording_codes(table, path, cfg, has_id)
    return [dictionary[c] for c in np.unique(codes[codes >= 0])]


def _recording_codes(
    table: pa.Table, path: str, cfg: DataConfig, has_id: bool
) -> tuple[np.ndarray, list[str]]:
    """Integer code per row (-1 for a missing id) and the id of each code."""
    if not has_id:
        return np.zeros(table.num_rows, np.int32), [recording_id_from_path(path)]
    column = table.column(cfg.columns.recording_id)
    if pa.types.is_dictionary(column.type):
        column = table.select([cfg.columns.recording_id]).unify_dictionaries().column(0)
        array = column.combine_chunks()
    else:
        array = pc.dictionary_encode(column.combine_chunks())
    dictionary = array.dictionary
    if not pa.types.is_string(dictionary.type):
        dictionary = pc.cast(dictionary, pa.string())
    names = dictionary.to_pylist()
    codes = pc.fill_null(array.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
    # an empty-string id is as good as no id
    empty = [i for i, name in enumerate(names) if name is None or not str(name).strip()]
    if empty:
        codes[np.isin(codes, empty)] = -1
    return codes, [str(n) for n in names]


def _grouping_order(
    codes: np.ndarray, timestamps: np.ndarray | None
) -> tuple[np.ndarray | None, list[int]]:
    """Row order that makes recordings contiguous and time-sorted; None when already so.

    Returns the order (or None) and the codes of recordings whose timestamps decreased.
    """
    if len(codes) == 0:
        return None, []
    n_runs = 1 + int(np.count_nonzero(codes[1:] != codes[:-1]))
    n_present = int(np.count_nonzero(np.bincount(codes)))
    order = None if n_runs == n_present else np.argsort(codes, kind="stable")
    if timestamps is None:
        return order, []
    c = codes if order is None else codes[order]
    t = timestamps if order is None else timestamps[order]
    decreasing = (np.diff(t) < 0) & (c[1:] == c[:-1])
    if not decreasing.any():
        return order, []
    unsorted = sorted(set(c[1:][decreasing].tolist()))
    by_time = np.lexsort((t, c))
    return (by_time if order is None else order[by_time]), unsorted


def _recordings_with(mask: np.ndarray, offsets: np.ndarray) -> list[int]:
    """Indices of the recordings that hold at least one True row of ``mask``."""
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        return []
    return np.unique(np.searchsorted(offsets, rows, side="right") - 1).tolist()


def _is_plain_numeric(f: pa.Field) -> bool:
    return pa.types.is_floating(f.type) or pa.types.is_integer(f.type)


_FILL_ROWS = 1 << 16


def _fill_in_blocks(
    values: np.ndarray, table: pa.Table, channels: Sequence[str], columns: Sequence[int]
) -> None:
    """Copy numeric columns into the row-major block a few thousand rows at a time.

    Writing one whole column into a row-major array strides over all of it once per channel;
    block by block, the rows being written stay in cache.
    """
    start = 0
    for batch in table.select([channels[j] for j in columns]).to_batches():
        arrays = [
            pc.cast(batch.column(k), pa.float64()).to_numpy(zero_copy_only=False)
            for k in range(batch.num_columns)
        ]
        for lo in range(0, batch.num_rows, _FILL_ROWS):
            hi = min(lo + _FILL_ROWS, batch.num_rows)
            block = values[start + lo : start + hi]
            for j, array in zip(columns, arrays, strict=True):
                block[:, j] = array[lo:hi]
        start += batch.num_rows


def _to_float64(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """A column as float64 (NaN for nulls), a mask of non-numeric cells and one example."""
    t = column.type
    if pa.types.is_dictionary(t):
        column = pc.cast(column, t.value_type)
        t = column.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        try:
            return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), None, None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            column = pc.cast(column, pa.string())
    try:
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), None, None
    except pa.ArrowInvalid:
        pass
    # Slow path for broken files only: pandas' C parser marks what is not a number.
    text = column.to_pandas().astype("string")
    numbers = pd.to_numeric(text.str.strip(), errors="coerce").astype("float64")
    blank = text.isna() | (text.str.strip() == "")
    bad = (numbers.isna() & ~blank).to_numpy(dtype=bool)
    example = str(text[bad].iloc[0]) if bad.any() else None
    values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    return values, (bad if bad.any() else None), example


def _timestamp_seconds(column: pa.ChunkedArray, cfg: DataConfig) -> np.ndarray:
    """Timestamps as float64 seconds (epoch for dates and times); NaN where unparsable."""
    t = column.type
    if pa.types.is_dictionary(t):
        column = pc.cast(column, t.value_type)
        t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        if cfg.timestamp_format is not None:
            column = pc.strptime(
                column, format=cfg.timestamp_format, unit="ns", error_is_null=True
            )
        else:
            try:
                column = pc.cast(column, pa.timestamp("ns"))
            except pa.ArrowInvalid:
                return _parse_text_timestamps(column)
        t = column.type
    if pa.types.is_timestamp(t):
        if t.tz is not None:
            column = pc.cast(column, pa.timestamp(t.unit, "UTC"))
        ns = pc.cast(pc.cast(column, pa.timestamp("ns")), pa.int64())
        return ns.to_numpy(zero_copy_only=False).astype(np.float64) / 1e9
    if pa.types.is_date(t):
        days = pc.cast(pc.cast(column, pa.date32()), pa.int32())
        return days.to_numpy(zero_copy_only=False).astype(np.float64) * 86400.0
    if pa.types.is_duration(t):
        ns = pc.cast(pc.cast(column, pa.duration("ns")), pa.int64())
        return ns.to_numpy(zero_copy_only=False).astype(np.float64) / 1e9
    values, _, _ = _to_float64(column)
    return values


def _parse_text_timestamps(column: pa.ChunkedArray) -> np.ndarray:
    """Slow path for text timestamps pyarrow cannot cast: dates, else numbers; NaN if neither."""
    text = column.to_pandas().astype("string")
    parsed = pd.to_datetime(text, errors="coerce", format="mixed")
    if parsed.notna().any():
        ns = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64)
        return np.where(parsed.isna().to_numpy(), np.nan, ns / 1e9)
    seconds, _, _ = _to_float64(column)
    return seconds
