"""Resumable output parts: the journal (:mod:`.store`), and its local
(:mod:`.local`) and object-store (:mod:`.objects`) stores."""

from __future__ import annotations

from clsx.batch.parts.store import Store
from clsx.io.storage import Location


def open_store(output: Location) -> Store:
    """The part store of ``output``: :class:`~clsx.batch.parts.local.PartStore` on a local disk, an
    :class:`~clsx.batch.parts.objects.ObjectPartStore` on an object store."""
    from clsx.batch.parts.local import PartStore
    from clsx.batch.parts.objects import ObjectPartStore

    if output.is_local:
        return PartStore(output.local_path)
    return ObjectPartStore(output)
