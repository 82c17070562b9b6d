"""Copy-on-write recovery snapshots for the stream's keyed logics.

Bytewax asks every key touched in an epoch for an immutable snapshot at the epoch's end, whether or not recovery
is on. Pickling each one cost a tenth of the dataflow's time, and most are never read: without recovery Bytewax
drops them at once, with it the recovery writer pickles them within the epoch. So a logic hands out a
:class:`LazySnapshot` of its live state and copies the state into it only before its next mutation, and only
if the handle is still held.
"""

from __future__ import annotations

import pickle
import threading
import weakref
from abc import abstractmethod
from typing import Any

from bytewax.operators import StatefulBatchLogic

_FREEZE_LOCK = threading.Lock()  # a snapshot may be frozen by its logic's worker and pickled by another's


class LazySnapshot:
    """A key's recovery snapshot, copied only if it must be: copy-on-write instead of a copy per key and epoch.

    Bytewax asks every key touched in an epoch for an immutable snapshot at the epoch's end,
    whether or not recovery is on. Pickling each one cost a tenth of the dataflow's time, and most
    are never read: without recovery Bytewax drops them at once, with it the recovery writer pickles
    them within the epoch. So :meth:`LazyLogic.snapshot` hands out this handle to the live state and
    keeps a weak reference to it; before the logic next mutates its state it calls
    :meth:`LazyLogic.thaw`, which pickles the state into the handle *if the handle is still alive*.
    Either way the handle pickles as the ``bytes`` a copying ``snapshot`` would return, and it
    never sees a change made after it was taken.
    """

    __slots__ = ("__weakref__", "_data", "_logic")

    def __init__(self, logic: LazyLogic) -> None:
        self._logic: LazyLogic | None = logic
        self._data: bytes | None = None

    def freeze(self) -> bytes:
        with _FREEZE_LOCK:
            if self._data is None:
                assert self._logic is not None
                self._data, self._logic = self._logic.dump(), None
            return self._data

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        return bytes, (self.freeze(),)


class LazyLogic(StatefulBatchLogic):  # type: ignore[misc]
    """A keyed logic whose snapshots are copy-on-write (:class:`LazySnapshot`): ``dump`` pickles the state, and every
    method that mutates it calls :meth:`thaw` first. Subclasses set ``_snap = None`` in their ``__init__`` (one
    logic is made per key, so without a ``super().__init__`` call)."""

    __slots__ = ("_snap",)
    _snap: weakref.ref[LazySnapshot] | None

    @staticmethod
    def loads(resume: bytes | LazySnapshot) -> Any:
        return pickle.loads(resume.freeze() if isinstance(resume, LazySnapshot) else resume)

    @abstractmethod
    def dump(self) -> bytes:
        """The key's state, pickled."""

    def thaw(self) -> None:
        """Before a mutation: copy the state into the last snapshot if anything still holds it."""
        ref = self._snap
        if ref is not None:
            self._snap = None
            snap = ref()
            if snap is not None:
                snap.freeze()

    def snapshot(self) -> LazySnapshot:
        ref = self._snap
        snap = ref() if ref is not None else None
        if snap is None:  # unchanged since the last one, which is still held: hand it out again
            snap = LazySnapshot(self)
            self._snap = weakref.ref(snap)
        return snap

