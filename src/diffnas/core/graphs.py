"""The search step as one CUDA graph (``trainer.cuda_graphs: true``).

A NAS-Bench-201 supernet step launches thousands of small kernels; on a GPU it is bound by launch
overhead (issue 4: the reference spends 297 ms of wall time on 79 ms of kernel time). A CUDA graph
records the whole step once (forward, backward, gradient clipping, both optimiser updates, the
finite check and the metric sums) and replays it with one launch.

How the engine uses :class:`StepGraph`:

* the first ``warmup`` steps of a run run eagerly on a side stream (cuDNN/cuBLAS set-up, the
  optimisers' lazily created state); the first of them runs under :func:`find_host_syncs`, and a
  step that reads a device value on the host (``.item()``, ``bool(t)``, boolean-mask indexing, a
  host-dependent branch) is refused with a :class:`RecipeError` naming where it happened;
* the step is captured at the first step of every epoch, after the learning rates are set and
  ``diffnas_epoch_start`` has fired, so every per-epoch value (learning rates, a scheduled τ or
  regulariser weight, a pruned supernet) is captured fresh; within an epoch the graph is replayed;
* each step's batches are made eagerly (the loader's gather and augmentation) and copied into the
  graph's static input tensors.

What cannot be captured is refused before the run starts (``Search._check_cuda_graphs``): a device
other than CUDA, ``on_nonfinite: skip`` (a host decision per step), per-step schedules, any other
plugin or component implementing ``diffnas_step_start`` or ``diffnas_step_end`` that does not declare
itself graph-safe (``cuda_graph_safe = True``, :func:`unsafe_step_hooks`; checked again when the
step graph is made, so plugins registered later are seen), and more than one process (``torchrun``).
Adam runs with ``capturable=True`` (its step count on the device).

The step hooks run outside the graph, eagerly, around each replay: the first step runs them under
:func:`find_host_syncs` too, and a host synchronisation there is refused like one in the step. The
metrics a replay returns are the graph's output buffers, overwritten by the next replay, so
``diffnas_step_end`` hooks receive copies (made only while such a hook is registered).

Python state inside components is frozen by the capture: a component that counts steps in Python,
or replaces a tensor that the step reads (rather than updating it in place), must not be used with
graphs, or must do that work in an epoch hook. The rules for plugin authors are in
``docs/graph_safety.md``.

The data pipeline (gather, crop, flip, normalise; about 36 ATen ops and the 4 copies into the
graph's inputs per bi-level step) stays outside the graph: the batch index depends on the host's
(epoch, step), and the augmentation draws from a device generator whose state is checkpointed.
``benchmarks/count_ops.py --data`` measures its share of a step.
"""

from __future__ import annotations

import os
import traceback
from typing import Any, Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import RecipeError

KEY = "recipe.trainer.cuda_graphs"

# ATen ops that make the host wait for the device: reading a scalar (``.item()``, ``float(t)``,
# ``bool(t)``) or an output whose size depends on the data (boolean-mask indexing, ``nonzero``).
_SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
             "aten::unique_dim", "aten::unique_consecutive", "aten::nonzero_static"}
# indexing by a bool mask runs ``nonzero`` inside the kernel: a data-dependent size, so a host sync
_INDEX_OPS = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


def _caller() -> str:
    """The innermost frame outside torch: the line of plugin or engine code that synchronised."""
    torch_dir = os.path.dirname(torch.__file__)
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.startswith(torch_dir) and frame.filename != __file__:
            return f"{frame.filename}:{frame.lineno} ({frame.name}: {(frame.line or '').strip()})"
    return "(inside torch)"


class HostSyncDetector(TorchDispatchMode):
    """Records every ATen op that synchronises the host with the device, with the code line that
    caused it; also copies between a CPU tensor and a device tensor (which a graph would bake in)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in _SYNC_OPS:
            self._add(f"{name.split('::')[1]} at {_caller()}")
        elif name in _INDEX_OPS and len(args) > 1 and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            self._add(f"boolean-mask indexing at {_caller()}")
        elif name in ("aten::_to_copy", "aten::copy_"):
            devs = {a.device.type for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)}
            if name == "aten::_to_copy" and kwargs.get("device") is not None:
                devs.add(torch.device(kwargs["device"]).type)
            if "cpu" in devs and len(devs) > 1:
                self._add(f"host-device copy at {_caller()}")
        return func(*args, **kwargs)

    def _add(self, what: str) -> None:
        if what not in self.found:
            self.found.append(what)


def find_host_syncs(fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Run ``fn()`` and return ``(its result, the host synchronisations it made)``, each as
    ``"op at file:line (function: code)"`` (backward ops included)."""
    with HostSyncDetector() as det:
        out = fn()
    return out, det.found


def fire_step_hooks_watched(fire: Callable[[], Any], watch: bool) -> list[str]:
    """Run ``fire()`` (an engine firing a step hook); with ``watch`` (a graphed run's first step),
    under the host-sync detector: return what it found."""
    if not watch:
        fire()
        return []
    return find_host_syncs(fire)[1]


def refuse_step_hook_syncs(syncs: list[str], source: Any = None) -> None:
    """Refuse the synchronisations :func:`fire_step_hooks_watched` found in the step hooks (they
    would make the host wait for every replay)."""
    if syncs:
        raise refuse("a step hook synchronises the host with the device at every replay: " + "; ".join(syncs[:5]),
                     source)


#: the eager steps a :class:`StepGraph` runs (the first under the host-sync detector) before its
#: first capture: cuDNN/cuBLAS set-up and the optimisers' lazily made state
WARMUP_STEPS = 3

#: the attribute by which a plugin (module, object or component class) declares that its
#: ``diffnas_step_start`` / ``diffnas_step_end`` hooks follow the rules of ``docs/graph_safety.md``
GRAPH_SAFE_ATTR = "cuda_graph_safe"
STEP_HOOKS = ("diffnas_step_start", "diffnas_step_end")


def unsafe_step_hooks(pm: Any, components: Iterable[tuple[str, Any]] = ()) -> list[str]:
    """``"name (hook)"`` for every step hook implementation whose plugin does not declare
    ``cuda_graph_safe = True``: those registered with ``pm`` and those of ``components`` (``(key,
    component)`` pairs, checked before the engine registers them)."""
    found: list[str] = []
    seen: set[tuple[int, str]] = set()
    for hook in STEP_HOOKS:
        impls = [(impl.plugin_name, impl.plugin) for impl in getattr(pm.hook, hook).get_hookimpls()]
        impls += [(key, comp) for key, comp in components
                  if hasattr(comp, hook) and pm.parse_hookimpl_opts(comp, hook) is not None]
        for name, plugin in impls:
            if (id(plugin), hook) in seen:
                continue
            seen.add((id(plugin), hook))
            if getattr(plugin, GRAPH_SAFE_ATTR, False) is not True:
                found.append(f"{name} ({hook})")
    return found


def refuse(msg: str, source: Any = None) -> RecipeError:
    return RecipeError([(f"trainer.cuda_graphs: {msg}; set trainer.cuda_graphs: false to run the step eagerly", KEY)],
                       source)


class StepGraph:
    """Runs ``step(train, valid) -> metrics`` eagerly ``warmup`` times, then captures it and
    replays it until :meth:`reset` (called at each epoch start).

    :param step: the engine's step body (update rule and device-side bookkeeping); it must read its
        batches only from its arguments and change state only in place.
    :param capture: False runs every step eagerly (the same orchestration without a graph: what
        the CPU tests exercise).
    :param generators: returns the CUDA generator states the step swaps in (a population's
        per-member RNG streams, :meth:`torch.Generator.graphsafe_set_state`); each is registered with
        the graph before its capture, so every replay advances each member's stream as eager steps would.
    """

    def __init__(self, step: Callable[..., dict[str, torch.Tensor]], warmup: int = WARMUP_STEPS, capture: bool = True,
                 source: Any = None,
                 generators: Callable[[], Iterable[torch.Generator]] | None = None):
        self.step = step
        self.warmup_left = warmup
        self.capture = capture
        self.source = source
        self.eager_left = 0
        self.generators = generators
        self.graph: Any = None
        self.static_in: list[torch.Tensor] = []
        self.static_out: dict[str, torch.Tensor] = {}
        self.checked = False
        self.captures = 0

    def reset(self, eager_steps: int = 0) -> None:
        """Forget the captured step (at epoch start: learning rates, τ, the supernet may change);
        run the next ``eager_steps`` steps eagerly before capturing again (where the warm-up ends
        inside an epoch: the new phase's first step adds metrics the warm-up's did not report, and
        their epoch sums must be made outside the graph, or each replay would make them afresh)."""
        self.graph, self.static_in, self.static_out = None, [], {}
        self.eager_left = eager_steps

    def __call__(self, train: tuple[torch.Tensor, ...], valid: tuple[torch.Tensor, ...] | None) -> dict[str, torch.Tensor]:
        if not self.checked:
            out, syncs = find_host_syncs(lambda: self._eager(train, valid))
            self.checked = True
            self.warmup_left -= 1
            if syncs:
                raise refuse("the step synchronises the host with the device, which a CUDA graph cannot capture: "
                             + "; ".join(syncs[:5]) + (f" (and {len(syncs) - 5} more)" if len(syncs) > 5 else ""),
                             self.source)
            return out
        if self.warmup_left > 0 or not self.capture:
            self.warmup_left -= 1
            return self._eager(train, valid)
        if self.graph is None and self.eager_left > 0:
            self.eager_left -= 1
            return self._eager(train, valid)
        inputs = [t for t in (train or ()) + (valid or ())]
        if self.graph is None:
            self._capture(train, valid)
        for dst, src in zip(self.static_in, inputs):
            dst.copy_(src)
        self.graph.replay()
        return self.static_out

    def _eager(self, train, valid):
        if not (self.capture and torch.cuda.is_available()):
            return self.step(train, valid)
        side = torch.cuda.Stream()  # warm-up off the default stream, as torch.cuda.graphs advises
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.step(train, valid)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _capture(self, train, valid) -> None:
        def static(batch):
            return None if batch is None else tuple(t.clone(memory_format=torch.preserve_format) for t in batch)

        s_train, s_valid = static(train), static(valid)
        self.static_in = [t for t in (s_train or ()) + (s_valid or ())]
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        for gen in (self.generators() if self.generators is not None else ()):
            graph.register_generator_state(gen)
        try:
            with torch.cuda.graph(graph):
                out = self.step(s_train, s_valid)
        except RuntimeError as exc:  # an op the capture does not allow: name it and the switch
            raise refuse(f"capturing the step failed: {str(exc).splitlines()[0]}", self.source) from exc
        self.graph, self.static_out = graph, out
        self.captures += 1
