"""The real memory of a served version: every tensor a predictor reaches, whatever its learner.

The LRU of resident versions is bounded by bytes, so this must count what a version
keeps alive — LAE's PET modules and head, an analytic learner's float64 statistics and
solved head, or a learner added later — without knowing any of them by name. It walks
the predictor's object graph (attributes, containers, modules) and adds up the storage
of each tensor once; the shared frozen backbone is not the version's and is skipped.
"""

from __future__ import annotations

import types

import torch

_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), range, type)
_SKIP = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
MAX_OBJECTS = 100_000  # a guard against a pathological graph, far above any predictor


def resident_bytes(model: object, backbone: object | None = None) -> int:
    """Bytes of tensor storage reachable from `model`, each storage once, the backbone's excluded."""
    skip_objects = {id(backbone)} if backbone is not None else set()
    skip_storages: set[int] = set()
    if isinstance(backbone, torch.nn.Module):
        skip_objects.update(id(m) for m in backbone.modules())
        for tensor in (*backbone.parameters(), *backbone.buffers()):
            skip_storages.add(_storage(tensor)[0])
    seen_objects: set[int] = set()
    seen_storages: set[int] = set()
    total = 0
    stack: list[object] = [model]
    while stack and len(seen_objects) < MAX_OBJECTS:
        item = stack.pop()
        if isinstance(item, _LEAVES) or isinstance(item, _SKIP) or id(item) in skip_objects:
            continue
        if id(item) in seen_objects:
            continue
        seen_objects.add(id(item))
        if isinstance(item, torch.Tensor):
            key, nbytes = _storage(item)
            if key not in seen_storages and key not in skip_storages:
                seen_storages.add(key)
                total += nbytes
            if item.grad is not None:
                stack.append(item.grad)
            continue
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        else:
            attributes = getattr(item, "__dict__", None)
            if isinstance(attributes, dict):
                stack.extend(attributes.values())
            for slot in getattr(type(item), "__slots__", ()):
                stack.append(getattr(item, slot, None))
    return total


def _storage(tensor: torch.Tensor) -> tuple[int, int]:
    """(identity, bytes) of the storage behind a tensor (a view counts its whole base)."""
    try:
        storage = tensor.untyped_storage()
        return storage.data_ptr() or id(storage), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # sparse, meta or other storage-less tensors
        return id(tensor), tensor.numel() * tensor.element_size()
