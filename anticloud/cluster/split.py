"""Which device holds each layer of a model: llama.cpp's own rule, stated for the record.

llama.cpp (``llama_model::load_tensors``) keeps the input layer on the CPU, numbers the
repeating layers 0..n-1 and the output layer n, and puts the last ``gpu_layers`` of those n + 1
on its devices (RPC devices first), each taking a share in proportion to the free memory it
reports; the rest stay on the CPU. Pure: `model.load` records what it gives.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate, groupby
from typing import Any

CPU = "CPU"


def assign(n_layer: int, gpu_layers: int, devices: Sequence[tuple[str, int]]) -> list[str]:
    """The device of each of the ``n_layer`` repeating layers and, last, of the output layer.
    ``devices`` are (name, free bytes) in llama.cpp's order. A negative ``gpu_layers`` is every
    layer, as llama-cpp-python passes it."""
    if gpu_layers < 0:
        gpu_layers = n_layer + 1
    first = max(n_layer + 1 - gpu_layers, 0)
    offloaded = min(gpu_layers, n_layer + 1) if devices else 0
    total = sum(free for _, free in devices) or 1
    points = [share / total for share in accumulate(free for _, free in devices)]

    def device(layer: int) -> str:
        if layer < first or layer - first >= offloaded:
            return CPU
        return devices[min(bisect_right(points, (layer - first) / offloaded), len(devices) - 1)][0]

    return [device(layer) for layer in range(n_layer + 1)]


def describe(n_layer: int, gpu_layers: int, devices: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """The split as a record states it: runs of consecutive layers per device ("output" is the
    output layer), and how many of the n + 1 layers live on another machine."""
    layers = assign(n_layer, gpu_layers, devices)
    runs: list[dict[str, Any]] = []
    index = 0
    for name, run in groupby(layers):
        count = len(list(run))
        last = index + count - 1
        runs.append({"device": name, "first": index, "last": "output" if last == n_layer else last})
        index += count
    return {"layers": n_layer, "gpu_layers": gpu_layers, "remote_layers": sum(d != CPU for d in layers),  # as set
            "runs": runs}
