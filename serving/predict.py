"""One row through an XGBoost booster, for a request: XGBoost's in-place prediction without its Python overhead.

``Booster.inplace_predict`` costs about 200 us for one row of a 200-tree model on this machine, most of it not
in the trees: it checks the input against every kind of frame XGBoost accepts, rebuilds its JSON arguments, and
converts the output through a class it defines anew on each call (``xgboost._data_utils.from_array_interface``).
:class:`RowPredictor` makes the same C call, ``XGBoosterPredictFromDense``, with the arguments built once, and
reads the one value back: about 90 us (``make bench-serving``'s floors report both).

The C call and its arguments are those of ``Booster.inplace_predict`` in XGBoost 3.x (``xgboost/core.py``):
``type`` 0 (values, not margins), ``training`` false, every tree (``iteration_range`` (0, 0)), ``missing`` NaN,
``strict_shape`` false, ``cache_id`` 0, and the input as a version-3 array interface of a C-contiguous float64
array. ``tests/unit/test_predict.py`` pins that both give the same value, bit for bit, for trained boosters.
These are XGBoost's internals (``xgboost.core._LIB``, ``_check_call``, ``c_bst_ulong``): this module is their one
user.
"""

from __future__ import annotations

import ctypes
import json
from typing import Final

import numpy as np
import numpy.typing as npt
import xgboost
from xgboost import core as _xgb_core

XGBOOST_MAJOR: Final = 3  # the major version whose inplace_predict this module mirrors

_C_BST_ULONG: Final = ctypes.c_uint64  # xgboost.core.c_bst_ulong (bst_ulong is uint64_t in XGBoost's C API)
_ARGS: Final = json.dumps({"type": 0, "training": False, "iteration_begin": 0, "iteration_end": 0,
                           "missing": float("nan"), "strict_shape": False, "cache_id": 0}).encode()


class RowPredictor:
    """``booster.inplace_predict(row)[0]`` for one float64 row of the booster's width. Safe across threads as
    ``inplace_predict`` is: XGBoost writes the output to a buffer of the calling thread, read before returning."""

    def __init__(self, booster: xgboost.Booster) -> None:
        if int(xgboost.__version__.split(".")[0]) != XGBOOST_MAJOR:
            raise RuntimeError(f"serving.predict mirrors XGBoost {XGBOOST_MAJOR}.x's inplace_predict, XGBoost is "
                               f"{xgboost.__version__}: run tests/unit/test_predict.py and update it")
        self.booster = booster
        self.width = booster.num_features()
        self._handle = booster.handle
        self._typestr = np.dtype(np.float64).str

    def __call__(self, row: npt.NDArray[np.float64]) -> float:
        if row.shape != (1, self.width) or row.dtype != np.float64 or not row.flags.c_contiguous:
            raise ValueError(f"one C-contiguous float64 row of {self.width} features expected, got {row.dtype} "
                             f"{row.shape}")
        interface = json.dumps({"data": (row.ctypes.data, True), "shape": row.shape, "typestr": self._typestr,
                                "version": 3}).encode()
        preds = ctypes.POINTER(ctypes.c_float)()
        shape = ctypes.POINTER(_C_BST_ULONG)()
        dims = _C_BST_ULONG()
        _xgb_core._check_call(_xgb_core._LIB.XGBoosterPredictFromDense(
            self._handle, interface, _ARGS, None, ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(preds)))
        if dims.value != 1 or shape[0] != 1:
            raise RuntimeError(f"XGBoost returned a prediction of {dims.value} dimensions; one value expected "
                               "(a multi-output model is not a propensity)")
        return float(preds[0])

