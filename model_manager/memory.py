"""How much memory a device has left, and how many more batch items that buys.

On CUDA the numbers come from the driver (`torch.cuda.mem_get_info`) and the allocator's
peak (`torch.cuda.max_memory_allocated`); on a CPU from available RAM (psutil).
"""

from __future__ import annotations

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

    `begin()`/`end(n)` bracket one batch of n items; on CUDA the allocator's peak over the
    batch, minus what was allocated before it, divided by n, is one observation. The cap is
    the largest n whose predicted peak fits in free memory less the headroom.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.bytes_per_item = 0.0
        self._baseline = 0

    def begin(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
            self._baseline = torch.cuda.memory_allocated()
        else:
            self._baseline = psutil.Process().memory_info().rss

    def end(self, items: int) -> None:
        if items <= 0:
            return
        if self.device.startswith("cuda"):
            import torch

            peak = torch.cuda.max_memory_allocated()
        else:
            # RSS after the batch: the allocator keeps what a batch grew, so growth shows here.
            peak = psutil.Process().memory_info().rss
        # The largest per-item cost seen so far is the safe one to plan with.
        self.bytes_per_item = max(self.bytes_per_item, (peak - self._baseline) / items)

    def max_items(self, ceiling: int) -> int:
        reading = read_memory(self.device)
        if not self.device.startswith("cuda") and reading.free_bytes < CPU_LOW_MEMORY_BYTES:
            return 1
        if self.bytes_per_item <= 0:
            return ceiling
        usable = reading.free_bytes - HEADROOM_FRACTION * reading.total_bytes
        return max(1, min(ceiling, int(usable // self.bytes_per_item)))
