"""clsx: fine-tuned text classifiers turned into fast batch inference over Parquet.

The Python API (:mod:`clsx.api`)::

    import clsx

    with clsx.load("my-model") as model:
        labels = model.predict(["the food arrived hot", "never again"])

``load``, ``batch_predict`` and ``ClsxError`` are imported on first use, so that
``import clsx`` (and ``clsx --help``) pulls in neither pyarrow nor torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it, imported when the name is first read. By name,
# not by an import statement: modules below the api layer import ``clsx`` for __version__.
_LAZY = {"load": "clsx.api", "batch_predict": "clsx.api", "ClsxError": "clsx.errors"}

__all__ = ["ClsxError", "__version__", "batch_predict", "load"]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'clsx' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
