"""CUDA graphs for the steady-state forward passes.

From the third block on, a forward pass is the same kernels on the same buffers every block: the KV
memory sits at fixed addresses, its phase is ``STEADY`` and it compresses once per block (the host
decides both in ``begin_block``). ``GraphedSteadySteps`` wraps a model for the sampler:

* first and second blocks, and the first steady call of each (memory, audio on/off) pair: eager;
  that eager call is also the warm-up the capture needs;
* the next call with the same key: the forward is captured into a CUDA graph over static copies of
  its inputs, then replayed; every later call copies the new inputs in and replays.

Inputs are copied into the graph's static buffers (latent, conditioning, timestep, audio tokens, and
the cross-attention K/V only when the prompt changed, i.e. on an edit). The output is cloned out of
the graph's memory pool, which all graphs share (they replay one after another). Host-side work in
the forward (block offload hooks, offloaded KV copies on a side stream) cannot be captured: such
models are refused.

The capture itself is injectable (``capture``) so the bookkeeping runs, and is tested, on a CPU;
``cuda_capture`` is the real one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from liveact.memory import STEADY, KVMemory
from liveact.model import CrossContext, LiveActTransformer

logger = logging.getLogger(__name__)

Capture = Callable[[Callable[[], torch.Tensor]], Callable[[], torch.Tensor]]


def cuda_capture(pool: object | None = None) -> Capture:
    """A ``Capture`` that records ``fn`` into a ``torch.cuda.CUDAGraph`` sharing memory ``pool``."""
    pool = pool if pool is not None else torch.cuda.graph_pool_handle()

    def capture(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn()

        def replay() -> torch.Tensor:
            graph.replay()
            return out

        return replay

    return capture


@dataclass
class _Graph:
    """Static inputs of one captured forward and its replay."""

    latent: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    audio: torch.Tensor | None
    context: CrossContext
    text_source: list[int] = field(default_factory=list)
    image_source: list[int] = field(default_factory=list)
    replay: Callable[[], torch.Tensor] | None = None


def _copy_context(dst: CrossContext, src: CrossContext, graph: _Graph) -> None:
    """Copy the K/V that changed (by tensor identity) into the static context."""
    for name, ids in (("text", graph.text_source), ("image", graph.image_source)):
        layers = getattr(src, name)
        current = [id(k) for k, _ in layers]
        if current != ids:
            for (dk, dv), (sk, sv) in zip(getattr(dst, name), layers):
                dk.copy_(sk)
                dv.copy_(sv)
            ids[:] = current


class GraphedSteadySteps:
    """A model wrapper whose steady-state calls replay CUDA graphs (see the module docstring).

    Args:
        model: the transformer (not block-offloaded; plain or FP8 KV memories on the device).
        capture: how a forward is captured; default ``cuda_capture()``.
    """

    def __init__(self, model: LiveActTransformer, capture: Capture | None = None) -> None:
        from liveact.speed.offload import block_offload_manager

        if block_offload_manager(model) is not None:
            raise ValueError(
                "CUDA graphs cannot capture block offload (its hooks copy weights from the host)"
            )
        self.model = model
        self._capture = capture
        self._graphs: dict[tuple, _Graph] = {}
        self.eager_calls = 0
        self.replays = 0

    def __getattr__(self, name: str) -> object:
        # Everything else the sampler uses (config, device, embed_text, new_memory ...) is the model's.
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(
        self,
        latent: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        context: CrossContext,
        memory: KVMemory,
        audio: torch.Tensor | None = None,
        silent_frames: int = 0,
    ) -> torch.Tensor:
        """``LiveActTransformer.forward``: same arguments, same result."""
        if memory.config.offload:
            raise ValueError(
                "CUDA graphs cannot capture an offloaded KV memory (host copies on a side stream)"
            )
        key = (
            id(memory),
            memory.phase,
            memory.compress_due,
            audio is None,
            tuple(latent.shape),
            tuple(y.shape),
            silent_frames,
        )
        graph = self._graphs.get(key)
        if memory.phase != STEADY or graph is None:
            if memory.phase == STEADY:
                # This eager call is the warm-up; the next one with the same key is captured.
                self._graphs[key] = _Graph(
                    latent.clone(),
                    y.clone(),
                    t.clone(),
                    None if audio is None else audio.clone(),
                    CrossContext(
                        text=[(k.clone(), v.clone()) for k, v in context.text],
                        image=[(k.clone(), v.clone()) for k, v in context.image],
                    ),
                )
            self.eager_calls += 1
            return self.model(latent, y, t, context, memory, audio=audio, silent_frames=silent_frames)
        graph.latent.copy_(latent)
        graph.y.copy_(y)
        graph.t.copy_(t)
        if audio is not None:
            graph.audio.copy_(audio)
        _copy_context(graph.context, context, graph)
        if graph.replay is None:
            capture = self._capture or cuda_capture()
            self._capture = capture
            graph.replay = capture(
                lambda: self.model(
                    graph.latent,
                    graph.y,
                    graph.t,
                    graph.context,
                    memory,
                    audio=graph.audio,
                    silent_frames=silent_frames,
                )
            )
            logger.info(
                "captured a CUDA graph for a steady-state step (%d graphs)",
                sum(g.replay is not None for g in self._graphs.values()),
            )
        self.replays += 1
        return graph.replay().clone()
