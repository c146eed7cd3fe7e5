"""Checkpoints of a job's analysis, so that a restart or a takeover replays only the
records after the last one (DESIGN.md, "Scaling out").

A checkpoint is the run's :class:`RunAnalysis` as it stood after the records up to its
``seq``, written in the same transaction as those records: it never claims records the
database does not hold. Rebuilding is then loading it and feeding the records after
``seq`` through the same loop as live ingest, so the alerts are those a full replay raises
(``edgewatch replay`` stays the reference; tests/test_checkpoints.py compares them).

The analysis is a graph of plain objects (``monitor/forecast.py`` and what it holds):
exponential averages, bounded deques of estimates, the plan, the alerts so far. It is
stored with pickle rather than a schema of its own, because such a schema would have to
follow every change of those classes by hand. Pickle's weaknesses are kept in check:

- it never crosses a socket (STYLE.md): it is written and read by daemons, in their own
  database; even so only the classes of the analysis may be loaded (``_Loader``), so a
  row written by someone with access to the database cannot run code in the daemon;
- a checkpoint from another version of edgewatch or format, from other predictor
  settings, or whose objects lack or add attributes the code has now (a class changed
  between two commits of the same version) is not used: the run is replayed in full, as
  before checkpoints existed. A slow start is better than an analysis that differs from
  the replay, or one that fails on the first record after it.
"""

from __future__ import annotations

import io
import logging
import pickle
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, delete, select

from edgewatch._version import __version__
from edgewatch.monitor.settings import PredictorSettings
from edgewatch.server.analysis import RunAnalysis
from edgewatch.server.tables import CheckpointRow

log = logging.getLogger(__name__)

FORMAT = 1
"""Raised when what a checkpoint holds changes in a way the checks below cannot see."""
C = CheckpointRow
_ALLOWED_MODULES = ("edgewatch.monitor.", "edgewatch.schemas.")
_ALLOWED = {
    ("edgewatch.server.analysis", "RunAnalysis"),
    ("collections", "deque"),
    ("msgspec._utils", "rebuild"),  # msgspec Structs (the newest estimate) pickle through it
}


class _Loader(pickle.Unpickler):
    """Loads only the analysis' own classes and a deque: nothing else can be called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or module.startswith(_ALLOWED_MODULES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a checkpoint may not load {module}.{name}")


def dumps(analysis: RunAnalysis) -> bytes:
    return pickle.dumps(analysis, protocol=5)


def write(conn: Connection, analysis: RunAnalysis) -> None:
    """Store the analysis as the job's checkpoint (in the caller's transaction, the one
    holding the records it has seen)."""
    conn.execute(delete(CheckpointRow).where(C.job_pk == analysis.job_pk))
    conn.execute(
        CheckpointRow.__table__.insert().values(  # type: ignore[attr-defined]
            job_pk=analysis.job_pk,
            run=analysis.run,
            seq=analysis.last_seq,
            format=FORMAT,
            version=__version__,
            state=dumps(analysis),
            written_at=time.time(),
        )
    )


def read(
    conn: Connection,
    job_pk: int,
    run: int,
    optimizer: Mapping[str, Any],
    settings: PredictorSettings,
    total_steps: int | None,
) -> RunAnalysis | None:
    """The run's checkpointed analysis, or None where there is none or it cannot be used
    (the caller then replays the run in full; the module docstring says why)."""
    row = conn.execute(select(CheckpointRow.__table__).where(C.job_pk == job_pk)).first()
    if row is None or row.run != run:
        return None
    why = None
    if (row.format, row.version) != (FORMAT, __version__):
        why = f"written by edgewatch {row.version} (format {row.format})"
    else:
        try:
            loaded = _Loader(io.BytesIO(row.state)).load()
        except Exception as exc:  # any failure to load means: replay in full
            loaded, why = None, f"unreadable ({type(exc).__name__}: {exc})"
        fresh = RunAnalysis(job_pk, run, optimizer, settings, total_steps)
        if why is None and not _same_shape(fresh, loaded):
            why = "its objects differ from this version's"
        elif why is None and (
            loaded.forecast.settings != settings
            or loaded.forecast.optimizer != fresh.forecast.optimizer
            or loaded.forecast.total_steps != total_steps
            or (loaded.job_pk, loaded.run, loaded.last_seq) != (job_pk, run, row.seq)
        ):
            why = "made with other predictor settings or for another run"
    if why is not None:
        log.warning("checkpoint of job %d run %d not used, %s: replaying in full", job_pk, run, why)
        return None
    assert isinstance(loaded, RunAnalysis)
    return loaded


def _same_shape(fresh: Any, loaded: Any, depth: int = 0) -> bool:
    """Whether ``loaded`` has the classes and attributes a fresh analysis has, down the
    objects of edgewatch's own classes (a default-valued fresh one shows every attribute
    the code reads)."""
    if type(fresh) is not type(loaded):
        return False
    if not hasattr(fresh, "__dict__") or depth > 6:
        return True
    mine, theirs = vars(fresh), vars(loaded)
    if mine.keys() != theirs.keys():
        return False
    for name, value in mine.items():
        values = value.values() if isinstance(value, dict) else (value,)
        others = theirs[name].values() if isinstance(theirs[name], dict) else (theirs[name],)
        for a, b in zip(values, others, strict=False):
            ours = type(a).__module__.startswith("edgewatch.") and hasattr(a, "__dict__")
            if ours and not _same_shape(a, b, depth + 1):
                return False
    return True
