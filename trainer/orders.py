"""Class orders. Two different CIFAR-100 orders both go by "seed 1993":

- `icarl1993`: the fixed list of iCaRL's code, reused by UCIR and PODNet
  (starts 87, 0, 52, 58, 44);
- `numpy1993`: `numpy.random.seed(1993); permutation(100)`, used by FACIL and PyCIL
  (starts 68, 56, 78, 8).
`seed:N` is `numpy.random.RandomState(N).permutation(n)`; `natural` is 0..n-1.
"""

from __future__ import annotations

import numpy as np

from m2kd.runtime.errors import ConfigError

ICARL_1993 = [
    87, 0, 52, 58, 44, 91, 68, 97, 51, 15, 94, 92, 10, 72, 49, 78, 61, 14, 8, 86,
    84, 96, 18, 24, 32, 45, 88, 11, 4, 67, 69, 66, 77, 47, 79, 93, 29, 50, 57, 83,
    17, 81, 41, 12, 37, 59, 25, 20, 80, 73, 1, 28, 6, 46, 62, 82, 53, 9, 31, 75,
    38, 63, 33, 74, 27, 22, 36, 3, 16, 21, 60, 19, 70, 90, 89, 43, 5, 42, 65, 76,
    40, 30, 23, 85, 2, 95, 56, 48, 71, 64, 98, 13, 99, 7, 34, 55, 54, 26, 35, 39,
]


def named_order(name: str, num_classes: int) -> list[int]:
    if name == "natural":
        return list(range(num_classes))
    if name == "icarl1993":
        if num_classes != 100:
            raise ConfigError("the icarl1993 order is for 100 classes (CIFAR-100)")
        return list(ICARL_1993)
    if name == "numpy1993":
        np.random.seed(1993)
        return [int(c) for c in np.random.permutation(num_classes)]
    if name.startswith("seed:"):
        try:
            seed = int(name.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"bad class order {name!r}; use seed:N") from None
        return [int(c) for c in np.random.RandomState(seed).permutation(num_classes)]
    raise ConfigError(f"unknown class order {name!r}; use natural, icarl1993, numpy1993 "
                      "or seed:N")
