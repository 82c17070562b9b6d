"""The one adapter for PySpark internals that Kairos relies on (PySpark 4.3, pinned in ``uv.lock``).

* :func:`observed_metrics`: ``Observation.get`` fails on the empty metrics row of a plan
  that ran no task, so the row is read through the observation's JVM handle
  (``Observation._jo``) first. There is no public way to tell "no task ran" apart from
  a failure; ``tests/integration/test_spark_empty_intervals.py`` fails if PySpark
  changes under it. Under Spark Connect ``_jo`` is absent and ``get`` is used as is.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import Observation


def observed_metrics(observation: Observation) -> dict[str, Any]:
    """The observation's metrics; ``{}`` when the plan ran no task at all, so nothing was written.

    When no task reported the metrics, the JVM's metrics row is the empty ``Row`` (no fields, no schema), and
    PySpark (4.0 to 4.3) fails ``Observation.get`` on it with an assertion in ``PythonSQLUtils.toPyRow``: an
    interval in which a view has no change point (a quiet hour, a day after every window emptied, a log without
    commerce events) plans an empty scan of zero partitions. No task means no rows either, so no metrics is
    exactly 0 rows and no days. The row is read first (it waits for the action, as ``get`` does) and only an
    empty one is taken as "nothing": any other failure still raises. ``tests/parity/test_spark_reference.py``
    and ``tests/integration/test_spark_empty_intervals.py`` pin the cases.
    """
    jo = getattr(observation, "_jo", None)  # the classic (JVM) observation; Spark Connect has none
    jrow = jo.getRow() if jo is not None else None
    if jrow is not None and jrow.length() == 0:
        return {}
    return dict(observation.get)
