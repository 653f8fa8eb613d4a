"""One error hierarchy. Every message says what went wrong and what to do.

The CLI turns any `M2KDError` into a one-line message and a non-zero exit;
anything else is a bug and keeps its traceback.
"""


class M2KDError(Exception):
    """Base of every error a user can cause (bad input, bad file, bad device)."""


class BundleError(M2KDError):
    """A bundle file cannot be used."""


class BundleFormatError(BundleError):
    """The file is not a well-formed v1 bundle (corrupt, truncated, wrong keys or shapes)."""


class BundleVersionError(BundleError):
    """The bundle declares a format version this reader does not know."""


class BundleIntegrityError(BundleError):
    """The checksum or a step's probe does not match: the bundle was altered or is broken."""


class DataError(M2KDError):
    """Training or inference input is missing, empty or unreadable."""


class CapacityError(M2KDError):
    """Too few free weights are left to learn another step."""


class DeviceError(M2KDError):
    """The requested device is not available."""


class ConfigError(M2KDError):
    """An option has a value that cannot work (unknown name, out of range)."""


class InvariantError(RuntimeError):
    """An internal guarantee was broken (a bug, never a user mistake)."""
