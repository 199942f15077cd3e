"""Let a CUDA build of torchvision import beside a CPU build of torch (the vLLM test venv only).

vLLM CPU 0.32 pins torch 2.13.0+cpu; the torchvision 0.28.0 wheel the package index serves is a CUDA build whose
C++ extension (`torchvision/_C.so`) needs libtorch_cuda and so fails to load. torchvision copes with a missing
extension everywhere except `torchvision/_meta_registrations.py`, which registers fake kernels for the ops
`torchvision::nms` and `torchvision::qnms` and fails with "operator torchvision::nms does not exist". This shim
declares those two op schemas (no kernels) just before that module runs, and only when the extension did not load,
so `import torchvision` behaves as for a torchvision built without C++ ops: the image transforms that HF video
processors use (pure torch) work, while detection ops (nms, roi_align, ...) raise their usual "Couldn't load
custom C++ ops" error if anything calls them. Nothing in the tests calls them.

Installed by `make test-vllm` as a module in the venv's site-packages plus a `.pth` line that imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "torchvision._meta_registrations"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARIES = []  # keep the Library objects alive: dropping one removes its definitions


def _declare_missing_ops() -> None:
    import torch
    import torchvision.extension

    if torchvision.extension._has_ops():
        return  # a matching torchvision: its own extension defines the ops
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        name = schema.split("(", 1)[0]
        if not hasattr(torch.ops.torchvision, name):
            library.define(schema)
    _LIBRARIES.append(library)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        _declare_missing_ops()
        self.inner.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
