"""The safe unpickler: a store's values read as primitives, never as code.

Reading never runs code found in the file: values are unpickled by `PrimitivesUnpickler`, which
refuses any value that names a class or function (plain `pickle.loads` would import and call it).
"""

from __future__ import annotations

import io
import pickle
from typing import Any


class PrimitivesUnpickler(pickle.Unpickler):
    """Unpickles numbers, strings, bytes, tuples, lists, dicts, sets, booleans and None only.

    Everything else in a pickle (a class, a function: what could run code) must be looked up by
    name through `find_class`, which refuses; so does `persistent_load`, by default.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: a store holds primitive values only"
        )


def load_primitives(value: bytes) -> Any:
    """`pickle.loads` for untrusted bytes: primitives, or UnpicklingError (never runs code)."""
    try:
        return PrimitivesUnpickler(io.BytesIO(value)).load()
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # a truncated or garbled pickle fails in many ways
        raise pickle.UnpicklingError(f"not a pickle ({type(exc).__name__}: {exc})") from None
