"""Argument normalisation for the kernels: arrays from callers become read-only, C-contiguous,
aligned views of the kernel's dtype (a copy only when the dtype or layout differs), so each call
matches the one signature compiled at start-up (kernels.py)."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt


def ro_i64(arr: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """An int64 read-only view (a copy only when the dtype or layout differs)."""
    return cast(npt.NDArray[np.int64], _ro(arr, np.int64))


def ro_f64(arr: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """A float64 read-only view (a copy only when the dtype or layout differs)."""
    return cast(npt.NDArray[np.float64], _ro(arr, np.float64))


def _ro(arr: npt.ArrayLike, dtype: Any) -> Any:
    out = np.require(arr, dtype, ("C", "A"))
    if out.flags.writeable:
        out = out.view()
        out.flags.writeable = False
    return out


def offsets(sorted_keys: npt.NDArray[np.int64], n_keys: int) -> npt.NDArray[np.int64]:
    """CSR offsets (n_keys + 1) of rows sorted by key code in 0..n_keys-1."""
    off = np.zeros(n_keys + 1, np.int64)
    np.cumsum(np.bincount(sorted_keys, minlength=n_keys), out=off[1:])
    return off
