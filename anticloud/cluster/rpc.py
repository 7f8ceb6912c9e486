"""The bindings to ggml's RPC backend, reached through ggml's backend registry.

llama-cpp-python 0.3.36 has no ``rpc_servers`` argument any more; llama.cpp's own tools
(``--rpc``, ``rpc-server``) find the backend by name in the registry and its functions by
``ggml_backend_reg_get_proc_address``, and so does this module, whether the RPC backend is
linked in or loaded as a module.

* `add_server` registers a worker's devices before a model loads: llama.cpp then puts the last
  ``gpu_layers`` layers of every model it loads on them (RPC devices first, then the CPU).
* `serve` runs the RPC server over this machine's CPU devices; it never returns.

llama.cpp aborts the whole process when an RPC connection fails, so the link is proven
(`anticloud.cluster.relay.Tunnel.probe`) before any of this touches it.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any

from anticloud.errors import ClusterError

CPU_DEVICE = 0  # enum ggml_backend_dev_type: GGML_BACKEND_DEVICE_TYPE_CPU
_registered: dict[str, list[Device]] = {}  # by endpoint
_handles: dict[str, int] = {}  # ggml_backend_dev_t by device name
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Device:
    """A ggml device, as its backend describes it."""

    name: str
    description: str
    free: int  # bytes
    total: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "memory_free": self.free,
                "memory_total": self.total}


def _ggml() -> ctypes.CDLL:
    """The libggml that llama.cpp uses, with the registry's signatures declared."""
    import llama_cpp

    from anticloud.cpu import load_cpu_backend

    load_cpu_backend()  # a portable build must choose its CPU backend before the registry starts
    lib: ctypes.CDLL = llama_cpp.llama_cpp._lib  # noqa: SLF001 -- llama-cpp-python offers no public handle
    p, s = ctypes.c_void_p, ctypes.c_size_t
    for name, args, result in (
            ("ggml_backend_reg_by_name", [ctypes.c_char_p], p),
            ("ggml_backend_reg_get_proc_address", [p, ctypes.c_char_p], p),
            ("ggml_backend_register", [p], None),
            ("ggml_backend_reg_dev_count", [p], s),
            ("ggml_backend_reg_dev_get", [p, s], p),
            ("ggml_backend_dev_count", [], s),
            ("ggml_backend_dev_get", [s], p),
            ("ggml_backend_dev_type", [p], ctypes.c_int),
            ("ggml_backend_dev_name", [p], ctypes.c_char_p),
            ("ggml_backend_dev_description", [p], ctypes.c_char_p),
            ("ggml_backend_dev_memory", [p, ctypes.POINTER(s), ctypes.POINTER(s)], None)):
        function = getattr(lib, name)
        function.argtypes, function.restype = args, result
    return lib


def _function(lib: ctypes.CDLL, name: str, prototype: Any) -> Any:
    registry = lib.ggml_backend_reg_by_name(b"RPC")
    if not registry:
        raise ClusterError("this build of llama.cpp has no RPC backend (it is compiled with -DGGML_RPC=ON)")
    address = lib.ggml_backend_reg_get_proc_address(registry, name.encode())
    if not address:
        raise ClusterError(f"llama.cpp's RPC backend does not export {name}")
    return prototype(address)


def _describe(lib: ctypes.CDLL, device: int) -> Device:
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    lib.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
    return Device(lib.ggml_backend_dev_name(device).decode(), lib.ggml_backend_dev_description(device).decode(),
                  free.value, total.value)


def supported() -> bool:
    """Whether this llama.cpp has its RPC backend."""
    return bool(_ggml().ggml_backend_reg_by_name(b"RPC"))


def add_server(endpoint: str) -> list[Device]:
    """Register the devices of the RPC server at ``endpoint`` (host:port) for the models loaded
    from now on, once per process; return them with the memory they report."""
    with _lock:
        if endpoint in _registered:
            return _registered[endpoint]
        lib = _ggml()
        add = _function(lib, "ggml_backend_rpc_add_server", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p))
        registry = add(endpoint.encode())
        if not registry:
            raise ClusterError(f"the RPC server at {endpoint} offers no device")
        lib.ggml_backend_register(registry)
        handles = [lib.ggml_backend_reg_dev_get(registry, i) for i in range(lib.ggml_backend_reg_dev_count(registry))]
        devices = [_describe(lib, handle) for handle in handles]
        _handles.update((device.name, handle) for device, handle in zip(devices, handles, strict=True))
        _registered[endpoint] = devices
        return devices


def refresh(devices: list[Device]) -> list[Device]:
    """``devices`` (registered here) with the memory they report now."""
    lib = _ggml()
    return [_describe(lib, _handles[device.name]) for device in devices]


def local_devices() -> list[Device]:
    """This machine's CPU devices: what a worker serves."""
    lib = _ggml()
    return [_describe(lib, device) for device in _cpu_devices(lib)]


def _cpu_devices(lib: ctypes.CDLL) -> list[int]:
    found = (lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count()))
    return [device for device in found if lib.ggml_backend_dev_type(device) == CPU_DEVICE]


def serve(endpoint: str, threads: int) -> None:
    """Serve this machine's CPU devices to RPC clients at ``endpoint``, one client at a time.
    Blocks for good (the GIL is released); returns only if the server could not start."""
    lib = _ggml()
    devices = _cpu_devices(lib)
    if not devices:
        raise ClusterError("llama.cpp found no CPU device to serve")
    start = _function(lib, "ggml_backend_rpc_start_server", ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)))
    array = (ctypes.c_void_p * len(devices))(*devices)
    start(endpoint.encode(), None, threads, len(devices), array)
