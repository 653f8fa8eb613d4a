"""The methods as small configurations of the engine, found by name.

Every entry builds a fresh method object; the error for an unknown name lists
the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

from m2kd.runtime.errors import ConfigError
from m2kd.runtime.m2kd import M2KD, M2KDConfig

METHODS: dict[str, Callable[[], object]] = {
    # M2KD Section 3: multi-model (Eq. 2) + auxiliary (Eq. 3) distillation, with pruning.
    "m2kd": lambda: M2KD(M2KDConfig(), "m2kd"),
    # Section 4.4 ablations.
    "lwf_mc_aux": lambda: M2KD(M2KDConfig(teachers="last"), "lwf_mc_aux"),
    "lwf_mc_mmd": lambda: M2KD(M2KDConfig(auxiliary=False), "lwf_mc_mmd"),
    "m2kd_skip1": lambda: M2KD(M2KDConfig(skip=1), "m2kd_skip1"),
    "m2kd_skip2": lambda: M2KD(M2KDConfig(skip=2), "m2kd_skip2"),
}


def create_method(name: str):
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]()
