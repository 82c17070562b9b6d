"""Where the stream writes: JSON-lines logs, dead letters, the Feast online store, memory.

The file sinks are Bytewax partitioned sinks that truncate to their snapshot on resume, so with recovery they
hold every row exactly once. The online writers (:class:`OnlineWriter`) drain at every snapshot (the end of
each epoch), so a snapshot never covers rows that were only buffered; rows replayed after a resume are upserts
of values already written.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition

from conf.settings import Settings
from features.events import FieldError
from features.spec import FeatureView
from pipelines.ingest.eventlog import DeadLetterStore
from pipelines.stream.changelog import part_of
from pipelines.stream.types import DEFAULT_PARTS, EVENT_TIMESTAMP, KEY_SEP, FeatureRow, Invalid

log = logging.getLogger(__name__)

_SQLITE_WRITE_LOCK = threading.Lock()
WRITTEN_KEYS = 1_000_000  # at most this many keys' written values an online writer remembers within an epoch
_LOCKED_RETRIES = 20


class _TruncatingFile(StatefulSinkPartition[bytes, int]):  # type: ignore[misc]
    """A JSON-lines file truncated to its snapshot on resume: lines are written exactly once.

    Items are encoded lines, each ending in a newline (one item may hold many lines)."""

    def __init__(self, path: Path, resume_state: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a+b")  # noqa: SIM115 - closed in close()
        self._fh.truncate(resume_state or 0)
        self._fh.seek(0, 2)

    def write_batch(self, values: list[bytes]) -> None:
        self._fh.write(b"".join(values))
        self._fh.flush()

    def snapshot(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()


class JsonlLogSink(FixedPartitionedSink[bytes, int]):  # type: ignore[misc]
    """``(key, lines)`` items (encoded JSON lines) into ``parts`` files ``<dir>/part-<i>.jsonl`` by key
    (exactly once with recovery). ``by_part``: the items' keys are part indexes already
    (:func:`pipelines.stream.changelog.lines_by_part`)."""

    def __init__(self, directory: Path, parts: int = DEFAULT_PARTS, *, by_part: bool = False) -> None:
        self.directory = Path(directory)
        self.parts = parts
        self.by_part = by_part

    def list_parts(self) -> list[str]:
        return [f"part-{i}.jsonl" for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return int(item_key) if self.by_part else part_of(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _TruncatingFile:
        return _TruncatingFile(self.directory / for_part, resume_state)


class _DeadLetterPartition(StatefulSinkPartition[Invalid, int]):  # type: ignore[misc]
    def __init__(self, path: Path, resume_state: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as fh:
            fh.truncate(resume_state or 0)
        self.store = DeadLetterStore(path=path, source="bytewax")

    def write_batch(self, values: list[Invalid]) -> None:
        for pos, payload, errors in values:
            self.store.put(payload if isinstance(payload, str | dict) else repr(payload),
                           [FieldError(field=f, problem=f"{p} (at {pos})") for f, p in errors])

    def snapshot(self) -> int:
        return self.store.path.stat().st_size if self.store.path.exists() else 0


class DeadLetterSink(FixedPartitionedSink[Invalid, int]):  # type: ignore[misc]
    """Invalid events into ``DeadLetterStore`` files ``<dir>/bytewax-<i>.jsonl`` (exactly once with recovery)."""

    def __init__(self, directory: Path, parts: int = 1) -> None:
        self.directory = Path(directory)
        self.parts = parts

    def list_parts(self) -> list[str]:
        return [f"bytewax-{i}.jsonl" for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return part_of(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _DeadLetterPartition:
        return _DeadLetterPartition(self.directory / for_part, resume_state)


class OnlineWriter(StatefulSinkPartition[FeatureRow, None]):  # type: ignore[misc]
    """Writes to Feast on a background thread, newest row per key, changed features only; flushed at every
    snapshot.

    Feast's online write costs a fixed amount per feature (SQLite: one upsert each), so rows wait here while a
    write is in flight and only each key's newest is written next: under load the batches grow and coalesce
    more, and the writer keeps up. Of a key's row only the features that differ from what this partition
    wrote for the key earlier in the same epoch are written (an event moves a few of a view's features); a
    key's first row in an epoch is written whole. So whatever else wrote the store (a batch materialization,
    another run) is overwritten by the key's next rows as it would be with whole rows, but for one epoch.
    ``snapshot`` (the end of every epoch) waits until everything received is written, so a recovery snapshot
    never covers rows that were only buffered: after a crash they are emitted again.
    """

    def __init__(self, settings: Settings, views: Mapping[str, FeatureView]) -> None:
        from feast import FeatureStore

        from pipelines.store.online import write_online_rows

        self.views = views
        self.write_online = write_online_rows
        self.store = FeatureStore(repo_path=str(settings.feature_repo_path))
        # SQLite has one writer at a time: writers of this process take turns instead of timing out on its lock
        self.lock = _SQLITE_WRITE_LOCK if settings.online_store.type == "sqlite" else contextlib.nullcontext()
        self._pending: dict[tuple[str, str], FeatureRow] = {}
        # view|key -> the values last written for it in this epoch, least recently written first (the writer
        # thread's while it writes; cleared at each snapshot, with the writer idle)
        self._written: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._busy = False
        self._closing = False
        self._error: BaseException | None = None
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="kairos-online-writer", daemon=True)
        self._thread.start()

    def write_batch(self, values: list[FeatureRow]) -> None:
        with self._cv:
            self._raise()
            for r in values:  # a key's rows come in time order; the store keeps one row per key
                prev = self._pending.get((r.view, r.key))
                if prev is None or r.event_timestamp >= prev.event_timestamp:
                    self._pending[(r.view, r.key)] = r
            self._cv.notify_all()

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError("writing the Feast online store failed") from self._error

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closing:
                    self._cv.wait()
                if not self._pending:
                    return
                batch, self._pending, self._busy = self._pending, {}, True
            try:
                self._write(batch.values())
            except BaseException as exc:  # surfaced to the dataflow by the next write_batch/snapshot
                log.exception("writing %d rows to the Feast online store failed", len(batch))
                with self._cv:
                    self._error = exc
                    self._busy = False
                    self._cv.notify_all()
                return
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _write(self, rows: Iterable[FeatureRow]) -> None:
        written = self._written
        by_view: dict[str, list[dict[str, Any]]] = defaultdict(list)
        done: list[tuple[tuple[str, str], Mapping[str, Any]]] = []
        for r in rows:
            key = (r.view, r.key)
            last = written.get(key)
            if last is None:
                changed: Mapping[str, Any] = r.values
            else:
                changed = {n: v for n, v in r.values.items() if n not in last or last[n] != v}
                if not changed:  # the store already holds every value of this row
                    continue
            view = self.views[r.view]
            by_view[r.view].append({view.entity.join_key: r.key, EVENT_TIMESTAMP: r.event_timestamp, **changed})
            done.append((key, r.values))
        for name, batch in by_view.items():
            for attempt in range(_LOCKED_RETRIES + 1):
                try:
                    with self.lock:
                        self.write_online(self.store, self.views[name], batch)
                    break
                except sqlite3.OperationalError as exc:  # another process holds SQLite's write lock too long
                    if "locked" not in str(exc) or attempt == _LOCKED_RETRIES:
                        raise
                    log.warning("online store locked, retrying the write of %d %s rows", len(batch), name)
                    time.sleep(0.1 * (attempt + 1))
        for key, values in done:  # only once written: a failed write leaves nothing believed written
            written.pop(key, None)  # re-inserted last: the dict stays in order of the last write
            written[key] = values
        while len(written) > WRITTEN_KEYS:
            del written[next(iter(written))]

    def flush(self) -> None:
        with self._cv:
            while (self._pending or self._busy) and self._error is None:
                self._cv.wait()
            self._raise()

    def snapshot(self) -> None:
        self.flush()
        with self._cv:  # the writer is idle until the next write_batch: the next epoch writes keys whole again
            self._written.clear()

    def close(self) -> None:
        self.flush()
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join()


class OnlineStoreSink(FixedPartitionedSink[FeatureRow, None]):  # type: ignore[misc]
    """Rows into the Feast online store (``pipelines.store.online.write_online_rows``), newest per key, in batches.

    ``parts`` writers (default: one per view), each a thread of the worker that owns it;
    a view's rows always go to the same writer. The repo must have been applied
    (``kairos apply``).
    """

    def __init__(self, settings: Settings, views: Mapping[str, FeatureView], parts: int | None = None) -> None:
        self.settings = settings
        self.views = dict(views)
        self.parts = parts or len(self.views)
        self._index = {name: i for i, name in enumerate(sorted(self.views))}

    def list_parts(self) -> list[str]:
        return [f"online-{i}" for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        """By view: each writer owns whole views (a view's Feast table has one writer)."""
        return self._index[item_key.split(KEY_SEP, 1)[0]]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> OnlineWriter:
        return OnlineWriter(self.settings, self.views)


class _MemoryPartition(StatelessSinkPartition[Any]):  # type: ignore[misc]
    def __init__(self, out: list[Any]) -> None:
        self.out = out

    def write_batch(self, items: list[Any]) -> None:
        self.out.extend(items)


class MemorySink(DynamicSink[Any]):  # type: ignore[misc]
    """Append items to a list (tests; one process)."""

    def __init__(self, out: list[Any]) -> None:
        self.out = out

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MemoryPartition:
        return _MemoryPartition(self.out)


