"""Numba plumbing for kernels.py: the typed decorator and the argument types of the one
signature each kernel is compiled for. No jitted code lives here: Numba's on-disk cache is
invalidated only by changes to the kernel's own source file, so every jitted function and every
constant the kernels read is in kernels.py.

Every kernel argument array is C-contiguous, aligned and READ-ONLY (the wrappers in online.py and
offline.py make a read-only view, which costs nothing), so each kernel has exactly one compiled
signature, compiled by `warmup.warm_up()` at start-up and never on a request: Numba would compile
a second specialisation for a writable array.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, cast

import numba
from numba import types as nbt

P = ParamSpec("P")
R = TypeVar("R")


class Kernel(Protocol[P, R]):
    """A Numba dispatcher as the rest of the package sees it."""

    py_func: Callable[P, R]
    signatures: list[tuple[Any, ...]]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def compile(self, sig: tuple[Any, ...]) -> Any: ...


def kernel(fn: Callable[P, R]) -> Kernel[P, R]:
    """`numba.njit(cache=True, nogil=True)`, typed: compiled machine code cached on disk, and the
    GIL released while it runs so a gRPC thread pool keeps serving."""
    return cast(Kernel[P, R], numba.njit(cache=True, nogil=True)(fn))


def helper(fn: Callable[P, R]) -> Kernel[P, R]:
    """A small jitted function inlined into its callers at Numba-IR level (a call per tile or
    per value is otherwise an out-of-line call with tuple returns)."""
    return cast(Kernel[P, R], numba.njit(cache=True, nogil=True, inline="always")(fn))


def ro(dtype: Any, ndim: int) -> Any:
    """The Numba type of a read-only C-contiguous array argument."""
    return nbt.Array(dtype, ndim, "C", readonly=True)


def rw(dtype: Any, ndim: int) -> Any:
    """The Numba type of a writable C-contiguous array argument (what a kernel allocates)."""
    return nbt.Array(dtype, ndim, "C")


I64 = nbt.int64
U8_1 = ro(nbt.uint8, 1)
I64_1, I64_2, I64_3 = ro(nbt.int64, 1), ro(nbt.int64, 2), ro(nbt.int64, 3)
F64_1, F64_2, F64_3 = ro(nbt.float64, 1), ro(nbt.float64, 2), ro(nbt.float64, 3)
