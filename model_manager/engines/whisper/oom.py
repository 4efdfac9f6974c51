"""Out-of-memory errors of either backend, as the BusError the model manager splits batches on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from model_manager.errors import OUT_OF_MEMORY, BusError


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError)
                                            and "out of memory" in str(exc).lower())


@contextmanager
def out_of_memory_as_bus_error(what: str) -> Iterator[None]:
    """Re-raise an out-of-memory error as BusError(OUT_OF_MEMORY) so the model manager can
    split the batch and retry; every other error passes through unchanged."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if is_out_of_memory(exc):
            raise BusError(OUT_OF_MEMORY, f"{what}: {exc}") from exc
        raise
