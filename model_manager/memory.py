"""How much memory a device has left, and how many more batch items that buys.

On CUDA the numbers come from the driver (`torch.cuda.mem_get_info`) and the allocator's
peak (`torch.cuda.max_memory_allocated`); on a CPU from available RAM (psutil).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil

# Keep this much free for the allocator's own overhead and other processes.
HEADROOM_FRACTION = 0.10
# Below this much available RAM a CPU worker runs one item at a time.
CPU_LOW_MEMORY_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class MemoryReading:
    device: str
    free_bytes: int
    total_bytes: int
    process_rss_bytes: int
    #: CUDA only: memory the driver counts as taken on the device, by every process (None on CPU).
    gpu_used_bytes: int | None = None


def read_memory(device: str) -> MemoryReading:
    rss = psutil.Process().memory_info().rss
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info()
        used = total - free
        # Memory torch's caching allocator holds but does not use is free for our batches,
        # though the driver counts it as taken.
        free += torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
        return MemoryReading(device, free, total, rss, used)
    vm = psutil.virtual_memory()
    return MemoryReading(device, vm.available, vm.total, rss)


class MemoryBudget:
    """Learns bytes per batch item from observed peaks and caps batches to fit free memory.

    `begin()`/`end(n)` bracket one batch of n items on the calling thread; on CUDA the
    allocator's peak over the batch, minus what was allocated before it, divided by n, is one
    observation. The cap is the largest n whose predicted peak fits in free memory less the
    headroom.

    Thread-safe: a model's worker instances share one budget, and every model on a device
    shares the device's peak counter, which `reset_peak_memory_stats` resets for all. So a
    batch is measured only when it ran alone on its device from begin to end; one that
    overlapped another batch is not an observation (its peak would be theirs too).
    """

    # Batches running per device, and whether each thread's batch has overlapped another.
    _device_lock = threading.Lock()
    _running: dict[str, int] = {}
    _overlapped: dict[int, bool] = {}

    def __init__(self, device: str) -> None:
        self.device = device
        self.bytes_per_item = 0.0
        self._lock = threading.Lock()
        self._local = threading.local()

    def begin(self) -> None:
        me = threading.get_ident()
        with MemoryBudget._device_lock:
            running = MemoryBudget._running.get(self.device, 0)
            if running:
                for thread in MemoryBudget._overlapped:
                    MemoryBudget._overlapped[thread] = True
            MemoryBudget._running[self.device] = running + 1
            MemoryBudget._overlapped[me] = running > 0
            if self.device.startswith("cuda"):
                import torch

                if not running:
                    torch.cuda.reset_peak_memory_stats()
                self._local.baseline = torch.cuda.memory_allocated()
            else:
                self._local.baseline = psutil.Process().memory_info().rss

    def end(self, items: int) -> None:
        me = threading.get_ident()
        with MemoryBudget._device_lock:
            MemoryBudget._running[self.device] = max(0, MemoryBudget._running.get(self.device, 1) - 1)
            overlapped = MemoryBudget._overlapped.pop(me, True)
            if items <= 0 or overlapped:
                return
            if self.device.startswith("cuda"):
                import torch

                peak = torch.cuda.max_memory_allocated()
            else:
                # RSS after the batch: the allocator keeps what a batch grew, so growth shows here.
                peak = psutil.Process().memory_info().rss
        observed = (peak - getattr(self._local, "baseline", peak)) / items
        with self._lock:
            # The largest per-item cost seen so far is the safe one to plan with.
            self.bytes_per_item = max(self.bytes_per_item, observed)

    def max_items(self, ceiling: int) -> int:
        reading = read_memory(self.device)
        if not self.device.startswith("cuda") and reading.free_bytes < CPU_LOW_MEMORY_BYTES:
            return 1
        with self._lock:
            per_item = self.bytes_per_item
        if per_item <= 0:
            return ceiling
        usable = reading.free_bytes - HEADROOM_FRACTION * reading.total_bytes
        return max(1, min(ceiling, int(usable // per_item)))
