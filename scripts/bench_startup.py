"""Start-up and whole-command speed of ``generate.py`` on the embedded Nano, for one or more checkouts.

    python scripts/bench_startup.py                         # this checkout, 3 runs
    python scripts/bench_startup.py --repo /tmp/old --repo . --runs 5   # before/after, interleaved

Each run is ``python generate.py`` on one entry of 15 s of speech (the two example clips joined), in
a fresh process without OMP_NUM_THREADS, as a user runs it. From the stderr time stamps of each run
it takes: the first line, the start of the first block (its "block 1/N done" line less the block's
own time), and the whole command; the real-time factor is the video's seconds over the whole
command's. Runs of the checkouts alternate, so background load hits them alike; medians are printed
with the ratio to the first repo.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
BLOCK_DONE = re.compile(r"block 1/\d+ done, \d+ frames \([\d.]+ s of video\) in ([\d.]+) s")
VIDEO_SECONDS = re.compile(r"\d+ frames \(([\d.]+) s of video, \d+ blocks?\)")


def make_inputs(folder: Path, seconds: float) -> Path:
    """A JSON of one entry: avatar_1.png and ``seconds`` of speech from the examples."""
    parts = [
        sf.read(ROOT / "examples" / name, dtype="float32")[0] for name in ("speech_1.wav", "speech_2.wav")
    ]
    speech = np.concatenate(parts)[: int(seconds * 16000)]
    sf.write(folder / "speech_15s.wav", speech, 16000)
    entry = {"prompt": "A person talks to the camera.", "cond_image": str(ROOT / "examples" / "avatar_1.png")}
    entry["cond_audio"] = str(folder / "speech_15s.wav")
    (folder / "job.json").write_text(json.dumps([entry]))
    return folder / "job.json"


def one_run(repo: Path, job: Path, out: Path) -> dict[str, float]:
    """Seconds from launch to the first stderr line, to the first block's start, to the exit."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as a user runs it
    env["PYTHONPATH"] = str(repo)
    cmd = [sys.executable, str(repo / "generate.py"), "--input_json", str(job), "--output_dir", str(out)]
    start = time.monotonic()
    proc = subprocess.Popen([*cmd, "--overwrite"], cwd=repo, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = block = None
    video = 0.0
    for line in proc.stderr:
        now = time.monotonic() - start
        first = now if first is None else first
        if block is None and (m := BLOCK_DONE.search(line)):
            block = now - float(m.group(1))
        if m := VIDEO_SECONDS.search(line):
            video = float(m.group(1))
    if proc.wait() != 0:
        raise SystemExit(f"{repo}: generate.py failed (status {proc.returncode})")
    total = time.monotonic() - start
    return {
        "first line s": first or total,
        "first block starts s": block or total,
        "whole s": total,
        "real-time factor": video / total,
    }


def main() -> None:
    """Run every repo ``--runs`` times, interleaved; print medians and ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--repo", type=Path, action="append", help="checkout to time (repeatable; default: this one)"
    )
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=15.0)
    args = p.parse_args()
    repos = [r.resolve() for r in (args.repo or [ROOT])]
    with tempfile.TemporaryDirectory() as tmp:
        job = make_inputs(Path(tmp), args.seconds)
        results: dict[Path, list[dict[str, float]]] = {r: [] for r in repos}
        for _ in range(args.runs):
            for repo in repos:
                results[repo].append(one_run(repo, job, Path(tmp) / "out"))
    keys = list(next(iter(results.values()))[0])
    base = {k: statistics.median(r[k] for r in results[repos[0]]) for k in keys}
    print(f"{args.seconds:.0f} s of speech, {args.runs} runs each, medians (ratio to {repos[0].name}):")
    print("| checkout | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for repo in repos:
        med = {k: statistics.median(r[k] for r in results[repo]) for k in keys}
        cells = [f"{med[k]:.2f} ({med[k] / base[k]:.2f}x)" for k in keys]
        print(f"| {repo} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
