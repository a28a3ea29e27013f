"""CPU smoke test of ``python -m liveact.bench gpu``: every mode's code path on a tiny preset.

No timing is asserted (the numbers come from a GPU run); what is checked is that each mode builds,
converts, streams and reports, that unavailable FP8 attention is reported as skipped, and that the
JSON and markdown outputs are written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from liveact.bench import gpu as gpu_bench
from liveact.bench.cli import main as bench_main
from liveact.bench.gpu import MODES, markdown, materialise, peak_tflops, planned_dit_gib, run_gpu_bench
from liveact.speed import memplan
from liveact.speed.offload import block_offload_manager
from liveact.speed.quant import FP8Linear


def test_every_mode_runs_on_a_tiny_preset() -> None:
    results = run_gpu_bench(
        preset="tiny",
        sizes=("64*64",),
        blocks=3,
        device="cpu",
        compile_mode="none",
        plan=False,
        warmup_blocks=1,
    )
    assert [r.mode for r in results] == list(MODES)
    by_mode = {r.mode: r for r in results}
    for mode in ("bf16", "fp8", "offload24"):
        r = by_mode[mode]
        assert r.status == "ok", (mode, r.status)
        assert len(r.step_ms) == 3 and all(ms > 0 for ms in r.step_ms), "three denoising steps timed"
        assert r.first_block_s > 0 and r.block_s > 0 and r.fps == pytest.approx(32 / r.block_s)
        assert r.tflops > 0 and r.peak_tflops is None  # no peak known for a CPU
    assert by_mode["fp8"].fp8_recipe == "emulated" and by_mode["bf16"].fp8_recipe is None
    skipped = by_mode["fp8+fp8attn"]
    assert skipped.status.startswith("skipped: sage attention unavailable") and skipped.fps is None
    table = markdown(results, "cpu")
    assert table.count("\n| ") == 1 + len(MODES) and "skipped" in table


def test_command_writes_json_and_markdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    # "cudagraphs" also compiles the islands: keep them eager here (compiling takes minutes on a CPU).
    from liveact import islands

    monkeypatch.setattr(islands, "enable_compiled_islands", lambda backend="inductor": None)
    limit = torch._dynamo.config.recompile_limit
    bench_main(
        [
            "gpu",
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--size",
            "64*64",
            "--blocks",
            "4",
            "--warmup_blocks",
            "0",
            "--compile",
            "cudagraphs",
            "--no_plan",
            "--mode",
            "bf16",
            "--mode",
            "offload24",
            "--out",
            str(out),
            "--markdown",
            str(md),
        ]
    )
    payload = json.loads(out.read_text())
    assert payload["preset"] == "tiny" and [r["mode"] for r in payload["results"]] == ["bf16", "offload24"]
    assert all(r["status"] == "ok" and r["fps"] > 0 for r in payload["results"])
    assert "| offload24 | 64*64 |" in md.read_text()
    # The benchmark raises Dynamo's recompile limit only while it runs (pytest 9's monkeypatch undo
    # of a torch config attribute deleted it once, and every later compile in the process failed).
    assert torch._dynamo.config.recompile_limit == limit


def test_command_needs_cuda_or_an_explicit_cpu() -> None:
    args = argparse.Namespace(blocks=6, device="cuda")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_bench.run_command(args)
    with pytest.raises(SystemExit, match="--blocks must be >= 3"):
        gpu_bench.run_command(argparse.Namespace(blocks=2, device="cpu"))


def test_random_weights_keep_activations_finite_and_scaled() -> None:
    model = materialise("nano", torch.device("cpu"), torch.float32)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    from liveact.bench.shared import synthetic_conditions
    from liveact.sampler import NeighborForcingSampler

    cond = synthetic_conditions(model, 64, 64, audio_frames=200, device="cpu")
    for x0 in NeighborForcingSampler(model).stream(cond, 2, torch.Generator().manual_seed(0)):
        assert torch.isfinite(x0).all() and 0.05 < x0.std() < 50


def test_fp8_then_offload_share_one_model(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_stream(model, size, blocks, device, memory, audio_cfg=1.0, warmup_blocks=0, cuda_graphs=False):
        seen[len(seen)] = (
            any(isinstance(m, FP8Linear) for m in model.modules()),
            block_offload_manager(model) is not None,
            memory.fp8 and memory.offload,
        )
        return gpu_bench.RunResult(
            mode="", size=size, first_block_s=1.0, block_s=1.0, step_ms=[1.0], fps=32.0
        )

    monkeypatch.setattr(gpu_bench, "stream_once", fake_stream)
    run_gpu_bench(
        preset="tiny",
        sizes=("64*64",),
        modes=("bf16", "fp8", "offload24"),
        blocks=3,
        device="cpu",
        compile_mode="none",
        plan=False,
    )
    assert seen == {0: (False, False, False), 1: (True, False, False), 2: (True, True, True)}


def test_peak_lookup_and_planned_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    assert peak_tflops(torch.device("cpu"), fp8=False) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert peak_tflops(torch.device("cuda"), fp8=False) == 989.0
    assert peak_tflops(torch.device("cuda"), fp8=True) == 1979.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert peak_tflops(torch.device("cuda"), fp8=False) == 756.0
    monkeypatch.setattr(memplan, "vae_activation_bytes", lambda options, memory, arch=None: (0, 0))
    plain = planned_dit_gib("tiny", "bf16", "64*64", torch.bfloat16)
    offload = planned_dit_gib("tiny", "offload24", "64*64", torch.bfloat16)
    assert 0 < offload < plain
