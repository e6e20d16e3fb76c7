"""A minimal tidy table: one row per measurement, one column per variable (written to CSV).

The studies return their data in this form so that a notebook, a test and the command line read the same
numbers; it is a list of dicts with a few helpers, not a data-frame library.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np


class Table:
    """Rows of measurements with the same keys, in insertion order.

    Parameters
    ----------
    rows : iterable of mapping
        Each maps a column name (str) to a scalar (number, str or bool). Every row must have the same keys.

    Raises
    ------
    ValueError
        If two rows have different keys.

    Examples
    --------
    >>> t = Table([{"depth": 8, "error": 0.1}, {"depth": 16, "error": 0.05}])
    >>> t.column("error")
    array([0.1 , 0.05])
    """

    def __init__(self, rows: Iterable[Mapping] = ()):
        self.rows: list[dict] = []
        self.columns: tuple[str, ...] = ()
        for row in rows:
            self.append(row)

    def append(self, row: Mapping) -> None:
        """Add one row; its keys must match the table's columns (the first row sets them)."""
        row = dict(row)
        if not self.rows:
            self.columns = tuple(row)
        elif tuple(row) != self.columns:
            raise ValueError(
                f"every row of a Table has the columns {list(self.columns)}; got a row with {list(row)}. "
                "Fill missing values with math.nan."
            )
        self.rows.append(row)

    def extend(self, rows: Iterable[Mapping]) -> None:
        """Append every row of ``rows`` (another Table or an iterable of mappings)."""
        for row in rows:
            self.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)

    def __repr__(self) -> str:
        return f"Table({len(self)} rows, columns={list(self.columns)})"

    def where(self, **conditions) -> "Table":
        """The rows whose columns equal the given values, e.g. ``table.where(net="leapfrog")``.

        Raises
        ------
        KeyError
            If a condition names a column the table does not have.
        """
        for name in conditions:
            self._check_column(name)
        return Table(r for r in self.rows if all(r[k] == v for k, v in conditions.items()))

    def column(self, name: str) -> np.ndarray:
        """The values of column ``name``, shape ``(len(self),)``, as a numpy array."""
        self._check_column(name)
        return np.asarray([r[name] for r in self.rows])

    def unique(self, name: str) -> list:
        """The distinct values of column ``name`` in order of first appearance."""
        return list(dict.fromkeys(self.column(name).tolist()))

    def to_csv(self, path: str | Path) -> Path:
        """Write the table as CSV (header row, then one line per row; floats with full precision)."""
        path = Path(path)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.columns)
            for r in self.rows:
                writer.writerow([_cell(r[c]) for c in self.columns])
        return path

    @classmethod
    def read_csv(cls, path: str | Path) -> "Table":
        """Read a table written by :meth:`to_csv` (numbers come back as float or int, the rest as str)."""
        with Path(path).open(newline="") as fh:
            return cls({k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh))

    def _check_column(self, name: str) -> None:
        if self.rows and name not in self.columns:
            raise KeyError(f"no column {name!r}; the columns are {list(self.columns)}")


def _cell(value):
    if isinstance(value, float):
        return repr(value)
    return value


def _parse(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    return text


__all__ = ["Table"]
