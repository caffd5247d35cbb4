"""`CsvLog`: a CSV file written row by row, flushed, so an interrupted run keeps every finished row
(the monitor's records, the lab's training logs and experiment tables). Standard library only."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from types import TracebackType
from typing import Any


class CsvLog:
    """A CSV file written row by row and flushed, so an interrupted run keeps every finished row."""

    def __init__(self, path: str | os.PathLike[str], columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self.rows = 0
        self._file = open(path, "w", newline="")  # noqa: SIM115 - closed by close() / the context manager
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
        self._writer.writeheader()
        self._file.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({key: _cell(value) for key, value in row.items()})
        self._file.flush()
        self.rows += 1

    def __call__(self, record: Any) -> None:
        """Write a dataclass record (an `EpochLog`, a `SiteRecord`) as one row."""
        self.write(asdict(record))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CsvLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _cell(value: Any) -> Any:
    """Floats with enough digits to compare, without float noise (0.30000000000000004)."""
    return f"{value:.6g}" if isinstance(value, float) else value
