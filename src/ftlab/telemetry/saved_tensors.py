"""Measure what autograd keeps for backward: bytes of saved tensors, whole forward and per chosen module.

`torch.autograd.graph.saved_tensors_hooks` sees every tensor an op saves for its backward. A step's saved-tensor peak
is reached when the forward ends (nothing saved is freed before backward starts), so the sum over distinct storages
saved during the forward is that peak. Counted once per storage (Q, K and V save the same input: one tensor; it counts
for the first module that saves it), and not counted: parameters and their dtype casts (autocast's bf16 weight
copies), which exist once whatever the batch size.
On CPU the allocator keeps no statistics, so this is the activation-memory measurement that works on every device.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

# grad_fn nodes through which a saved tensor is still "the weight" (a view or a dtype cast of a parameter)
_WEIGHT_PATH = {"ToCopyBackward0", "TBackward0", "TransposeBackward0", "ViewBackward0", "PermuteBackward0",
                "ExpandBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "AliasBackward0"}


def _is_parameter_cast(t: torch.Tensor, frozen: dict[tuple[int, ...], list[torch.Tensor]], params: set[int]) -> bool:
    """True for a parameter seen through views and dtype casts (autocast's low-precision weight copies)."""
    node = t.grad_fn
    if node is None:  # a frozen weight's cast has no history: recognise it by its values
        with torch.no_grad():
            for p in frozen.get(tuple(t.shape), []):
                if p.dtype != t.dtype and torch.equal(p.to(t.dtype), t):
                    return True
            if t.dim() == 2:
                for p in frozen.get(tuple(t.shape[::-1]), []):
                    if p.dtype != t.dtype and torch.equal(p.to(t.dtype).t(), t):
                        return True
        return False
    while node is not None and type(node).__name__ in _WEIGHT_PATH:
        parents = [f for f, _ in node.next_functions if f is not None]
        if len(parents) != 1:
            return False
        node = parents[0]
    if node is None or type(node).__name__ != "AccumulateGrad":
        return False
    return node.variable.untyped_storage().data_ptr() in params  # a parameter, not an input that requires grad


@dataclass
class SavedTensors:
    """Distinct saved storages of one forward: bytes in total, per watched module, and the largest ones."""

    total_bytes: int = 0
    watched_bytes: dict[str, int] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)   # one per storage: bytes, shape, dtype, owner

    @property
    def watched_total(self) -> int:
        return sum(self.watched_bytes.values())

    def largest(self, n: int = 8) -> list[dict[str, Any]]:
        """The n biggest (shape, dtype) groups with their count and bytes: what dominates the saved memory."""
        groups: dict[tuple[str, str, str], dict[str, Any]] = {}
        for e in self.entries:
            key = (str(e["shape"]), e["dtype"], e["produced_by"])
            g = groups.setdefault(key, {"shape": e["shape"], "dtype": e["dtype"], "produced_by": e["produced_by"],
                                        "count": 0, "bytes": 0})
            g["count"] += 1
            g["bytes"] += e["bytes"]
        return sorted(groups.values(), key=lambda g: -g["bytes"])[:n]


class SavedTensorMeter:
    """Context manager: `with SavedTensorMeter(model, watch) as meter: loss = model(...)`; then `meter.result`."""

    def __init__(self, model: nn.Module, watch: dict[str, nn.Module] | None = None):
        self.model, self.watch = model, dict(watch or {})
        self.result = SavedTensors()
        self._seen: set[int] = set()
        self._inside: list[str] = []
        self._handles: list[Any] = []
        self._stack = contextlib.ExitStack()
        self._param_ptrs: set[int] = set()
        self._frozen: dict[tuple[int, ...], list[torch.Tensor]] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        # keep a detached alias: an op's saved *output* returned as-is would hold its own grad_fn, a reference cycle
        # that leaks the whole graph when it is dropped without a backward (first-order backward is unaffected)
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self._seen or ptr in self._param_ptrs or _is_parameter_cast(t, self._frozen, self._param_ptrs):
            return t.detach()
        self._seen.add(ptr)
        nbytes = storage.nbytes()
        owner = self._inside[-1] if self._inside else None
        self.result.total_bytes += nbytes
        if owner is not None:
            self.result.watched_bytes[owner] = self.result.watched_bytes.get(owner, 0) + nbytes
        op = type(t.grad_fn).__name__ if t.grad_fn is not None else "leaf"
        self.result.entries.append({"bytes": nbytes, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                                    "owner": owner, "produced_by": op})
        return t.detach()

    def _enter(self, name: str) -> None:
        self._inside.append(name)

    def _leave(self) -> None:  # a forward hook that returned a value would replace the module's output
        self._inside.pop()

    def __enter__(self) -> SavedTensorMeter:
        self._param_ptrs = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        self._frozen = {}
        for p in self.model.parameters():
            if not p.requires_grad:
                self._frozen.setdefault(tuple(p.shape), []).append(p)
        for name, module in self.watch.items():
            self._handles.append(module.register_forward_pre_hook(lambda m, a, name=name: self._enter(name)))
            self._handles.append(module.register_forward_hook(lambda m, a, o: self._leave(), always_call=True))
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()
        for h in self._handles:
            h.remove()
        self._handles = []


@contextlib.contextmanager
def measure_saved(model: nn.Module, watch: dict[str, nn.Module] | None = None) -> Iterator[SavedTensors]:
    """`with measure_saved(model, layers) as saved: out = model(**batch)` — saved.total_bytes, saved.watched_total."""
    meter = SavedTensorMeter(model, watch)
    with meter:
        yield meter.result
