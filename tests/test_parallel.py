"""Sequence parallelism (``liveact.speed.parallel``) on 2 and 4 CPU ranks (gloo, file store) equals one
process.

A tiny random model (4 heads) streams 6 blocks with audio CFG and edits, and 4 blocks with FP8 memory
+ mean compression; every block's ``x0`` of every rank is compared with the single-process run. The
6x6 latent gives 9 tokens per frame, so on 4 ranks the shards are uneven (14, 14, 13, 13 tokens of a
6-frame block) and start inside frames: the audio attention and the silent first frame see partial
frames. Per-rank memory is 1/N of the single process's.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from liveact.config import PRESETS, ModelConfig
from liveact.model import AudioCrossAttention, frame_runs
from liveact.sampler import Conditions, NeighborForcingSampler
from liveact.speed.parallel import check_world_size, maybe_init_dist, parallelize, token_splits

logger = logging.getLogger(__name__)

CONFIG: ModelConfig = replace(PRESETS["tiny"], num_layers=2)
LATENT_HW = (6, 6)
BOUND = 1e-5
# name -> (sampler options, blocks); the CFG/edit run is the main check and needs 6 blocks.
SCENARIOS: dict[str, tuple[dict, int]] = {
    "cfg_edit": ({"audio_cfg": 2.0}, 6),
    "fp8_mean": ({"fp8_kv_cache": True, "mean_memory": True}, 4),
}


def _conditions(seed: int = 1) -> Conditions:
    g = torch.Generator().manual_seed(seed)
    lh, lw = LATENT_HW
    cfg = CONFIG

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g)

    return Conditions(
        text=rand(7, cfg.text_dim),
        clip=rand(1, 257, cfg.clip_dim),
        y=rand(1, cfg.cond_dim, 14, lh, lw),
        audio=rand(181, cfg.audio_layers, cfg.audio_channels),
        edits=[((1, 2), rand(5, cfg.text_dim)), ((2, 3), rand(9, cfg.text_dim))],
    )


def _model(state_path: Path):
    from liveact.model import LiveActTransformer

    model = LiveActTransformer(CONFIG)
    model.load_state_dict(torch.load(state_path, weights_only=True))
    return model.eval()


def _run(model, name: str) -> dict:
    """Stream one scenario; returns every block's x0 and the bytes of all its KV memories."""
    options, blocks = SCENARIOS[name]
    sampler = NeighborForcingSampler(model, **options)
    gen = torch.Generator().manual_seed(11)
    x0 = [b.clone() for b in sampler.stream(_conditions(), num_blocks=blocks, generator=gen)]
    lh, lw = LATENT_HW
    memories, null_memories = sampler.memories((lh // 2) * (lw // 2))
    nbytes = sum(m.nbytes() for m in [*memories, *null_memories.values()])
    return {"x0": x0, "nbytes": nbytes}


def _rank_result(state_path: Path, mode: str) -> dict:
    """This rank's results; the parallelized model lives only inside this call."""
    model = _model(state_path)
    if mode == "error":
        try:
            parallelize(model)
        except ValueError as exc:
            return {"error": str(exc)}
        return {"error": None}
    parallelize(model)
    return {name: _run(model, name) for name in SCENARIOS}


def _worker(rank: int, world_size: int, store: str, state_path: str, out_dir: str, mode: str) -> None:
    """One rank: join the gloo group through a file store, parallelize, run, save the results.

    Teardown order matters. ``parallelize`` leaves the model in a reference cycle (its wrappers hold
    bound methods of the model), and the model holds the process group, so after this rank's last
    collective the group would outlive ``destroy_process_group`` until the interpreter's final garbage
    collection. Its gloo worker threads then still run during interpreter shutdown, and one that
    drops a finished collective's work there must take the GIL to release the tensors' Python
    objects: Python ends that thread inside a noexcept destructor and the process aborts with
    "terminate called without an active exception" (a timing race: about 1 run in 20 here).
    Collecting the cycle first lets ``destroy_process_group`` free the group and join its threads
    while the interpreter is whole. A file store (instead of tcp:// on a port picked in advance)
    also removes the race for the port with other processes on the machine.
    """
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        result = _rank_result(Path(state_path), mode)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        gc.collect()
        dist.destroy_process_group()


def _spawn(world_size: int, state_path: Path, tmp: Path, mode: str = "run") -> list[dict]:
    store = tmp / "rendezvous"
    mp.spawn(_worker, args=(world_size, str(store), str(state_path), str(tmp), mode), nprocs=world_size)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's max magnitude."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The model's weights on disk and the single-process results of every scenario."""
    from liveact.model import LiveActTransformer

    torch.manual_seed(0)
    model = LiveActTransformer(CONFIG).eval()
    path = tmp_path_factory.mktemp("sp") / "state.pt"
    torch.save(model.state_dict(), path)
    return path, {name: _run(model, name) for name in SCENARIOS}


# ------------------------------------------------------------------------------------------------
# single-process pieces


def test_check_world_size() -> None:
    for ok in (1, 2, 4, 40):
        check_world_size(40, ok)
    for bad in (3, 8):
        with pytest.raises(ValueError, match=f"num_heads=4 to be divisible by the world size.*{bad}|{bad}"):
            check_world_size(4, bad)


def test_maybe_init_dist(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert maybe_init_dist(num_heads=4) is None
    # A bad world size fails before any process group (or model) exists.
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="nproc_per_node"):
        maybe_init_dist(num_heads=4)
    assert not dist.is_initialized()


def test_token_splits_and_frame_runs() -> None:
    assert token_splits(54, 4) == [14, 14, 13, 13]
    assert token_splits(72, 2) == [36, 36]
    assert frame_runs(0, 54, 9) == [(0, 54, 0, 6)]
    # Tokens 14..27 of 9-token frames: the end of frame 1, all of frame 2.
    assert frame_runs(14, 14, 9) == [(0, 4, 1, 1), (4, 13, 2, 1), (13, 14, 3, 1)]
    assert frame_runs(3, 4, 9) == [(0, 4, 0, 1)]


def test_audio_attention_on_token_ranges() -> None:
    """Audio attention over shards, concatenated, equals the whole block (batch of two included)."""
    torch.manual_seed(0)
    attn = AudioCrossAttention(CONFIG)
    fl, frames = 9, 6
    x = torch.randn(2, frames * fl, CONFIG.dim)
    audio = torch.randn(frames, CONFIG.context_tokens, CONFIG.output_dim)
    full = attn(x, audio, fl)
    splits = token_splits(frames * fl, 4)
    starts = [sum(splits[:r]) for r in range(4)]
    parts = [attn(x[:, s : s + n], audio, fl, s) for s, n in zip(starts, splits)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# multi-process


@pytest.mark.parametrize("world_size", [2, 4])
def test_sequence_parallel_matches_single_process(
    world_size: int, reference: tuple[Path, dict], tmp_path: Path
) -> None:
    state_path, expected = reference
    ranks = _spawn(world_size, state_path, tmp_path)
    for name, want in expected.items():
        errors = [max(_rel(a, b) for a, b in zip(r[name]["x0"], want["x0"])) for r in ranks]
        per_block = [_rel(a, b) for a, b in zip(ranks[0][name]["x0"], want["x0"])]
        logger.info(
            "world %d %s: per-block max rel error %s", world_size, name, [f"{e:.1e}" for e in per_block]
        )
        assert len(ranks[0][name]["x0"]) == len(want["x0"]) == SCENARIOS[name][1]
        assert max(errors) <= BOUND, f"{name}: per-rank max rel error {errors} > {BOUND}"
        # Every rank returns the same bytes, so samplers stay in lock-step.
        for r in ranks[1:]:
            for a, b in zip(r[name]["x0"], ranks[0][name]["x0"]):
                assert torch.equal(a, b)
        for r in ranks:
            assert r[name]["nbytes"] * world_size == want["nbytes"]


def test_world_size_not_dividing_heads_is_refused(reference: tuple[Path, dict], tmp_path: Path) -> None:
    ranks = _spawn(3, reference[0], tmp_path, mode="error")
    for r in ranks:
        assert r["error"] is not None and "num_heads=4" in r["error"] and "3" in r["error"]
