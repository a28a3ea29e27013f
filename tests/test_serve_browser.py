"""The studio page in headless Debian Chromium (Playwright), against ``demo.py`` with the embedded
LiveAct-Nano model (what ``python demo.py`` serves); ``LIVEACT_BROWSER_MODEL=tiny`` uses the random-weight
tiny assets in the official formats instead.

Upload path: pick an image and an audio file, start, and check that the ``<video>`` plays (its time
advances, frames are not blank) with an audio track; a screenshot is saved and the time to first
frame printed. Microphone path: Chromium's fake capture device plays a wav into ``getUserMedia``;
frames arrive while the page sends that audio, and the speech-to-screen latency is printed.

Slow (a server start and a browser): ``pytest -m slow tests/test_serve_browser.py -s``. Set
``LIVEACT_SCREENSHOT=docs/demo.png`` to also write the README's screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageDraw
from tiny_assets import write_tiny_assets

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("LIVEACT_CHROMIUM", "/usr/bin/chromium")
MODEL = os.environ.get("LIVEACT_BROWSER_MODEL", "nano")
SIZE = (64, 64) if MODEL == "tiny" else (128, 128)  # frame size the server streams
MIC_BLOCKS = (
    2 if MODEL == "tiny" else 4
)  # blocks to see while speaking (a median over several, when fast enough)
REPO = Path(__file__).resolve().parents[1]
BASE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def speech_wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    """Syllable-like bursts of a voiced tone (so the audio is not silent and has structure)."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = (np.sin(2 * np.pi * 2.5 * t) > 0).astype(np.float32)
    wave = 0.4 * envelope * (np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t))
    sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
    return path


def portrait(path: Path) -> Path:
    if MODEL != "tiny":  # a face of the family the model was trained on
        shutil.copyfile(REPO / "examples" / "avatar_1.png", path)
        return path
    img = Image.new("RGB", (256, 320), (70, 90, 120))
    draw = ImageDraw.Draw(img)
    draw.ellipse((68, 60, 188, 200), fill=(224, 182, 150))
    draw.rectangle((40, 220, 216, 320), fill=(40, 40, 60))
    img.save(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} not installed (.ci/run installs Debian's chromium)")
    pytest.importorskip("playwright")
    root = tmp_path_factory.mktemp("browser")
    if MODEL == "tiny":
        ckpt, w2v = write_tiny_assets(root / "assets", seed=0)
        model = [
            "--ckpt_dir",
            str(ckpt),
            "--wav2vec_dir",
            str(w2v),
            "--size",
            f"{SIZE[0]}*{SIZE[1]}",
            "--fps",
            "24",
        ]
    else:
        model = []  # no --ckpt_dir: the embedded model, at its own size and fps
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "demo.py"),
            *model,
            "--port",
            str(port),
            "--data_dir",
            str(root / "data"),
            "--warmup_blocks",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = None
    deadline = time.monotonic() + 300
    lines = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"LiveAct demo on (http://\S+/)", line):
            url = m.group(1)
            break
    if url is None:
        proc.kill()
        pytest.fail("demo.py did not start:\n" + "".join(lines[-40:]))
    # Keep draining the server's output so it never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    yield url
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def launch(playwright: object, user_dir: Path, extra: list[str]) -> object:
    return playwright.chromium.launch_persistent_context(  # type: ignore[attr-defined]
        str(user_dir),
        executable_path=CHROMIUM,
        headless=True,
        args=BASE_FLAGS + extra,
        viewport={"width": 1180, "height": 760},
    )


FRAME_STATS = """() => {
  const v = document.getElementById('player');
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let sum = 0, sq = 0, n = 0;
  for (let i = 0; i < d.length; i += 4) {
    const y = (d[i] + d[i + 1] + d[i + 2]) / 3; sum += y; sq += y * y; n++;
  }
  const mean = sum / n;
  return { width: c.width, height: c.height, mean, std: Math.sqrt(sq / n - mean * mean),
           time: v.currentTime, audioBytes: v.webkitAudioDecodedByteCount,
           frames: window.liveactStats.frames.length };
}"""


def test_upload_job_plays_in_chromium(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    image, audio = portrait(tmp_path / "face.png"), speech_wav(tmp_path / "speech.wav", 6.0)
    with sync_playwright() as p:
        browser = launch(p, tmp_path / "profile", [])
        page = browser.new_page()
        page.goto(server)
        page.set_input_files("#image", str(image))
        page.set_input_files("#audio", str(audio))
        page.fill("#prompt", "A person talks to the camera.")
        page.click("#add-edit")
        page.fill("#edits .edit .text", "The person smiles.")
        page.click("#start")
        page.wait_for_function("window.liveactStats.firstFrameMs !== null", timeout=180_000)
        first_frame = page.evaluate("window.liveactStats.firstFrameMs") / 1000
        before = page.evaluate(FRAME_STATS)
        # It plays: more frames are presented and the clock moves (generous: the model may be slower
        # than real time on a busy CI machine, and the player then waits for the next block).
        page.wait_for_function(
            f"window.liveactStats.frames.length >= {before['frames'] + 10}", timeout=120_000
        )
        after = page.evaluate(FRAME_STATS)
        assert after["time"] > before["time"], (before, after)
        assert (after["width"], after["height"]) == SIZE
        assert after["std"] > 5.0, after  # not a blank (uniform) frame
        assert after["audioBytes"] > 0, after  # an audio track is decoded
        page.wait_for_selector("#download:not([hidden])", timeout=180_000)
        href = page.get_attribute("#download", "href")
        assert href and re.fullmatch(r"/api/jobs/[0-9a-f]{32}/video", href)
        shot = tmp_path / "demo.png"
        page.screenshot(path=str(shot))
        if os.environ.get("LIVEACT_SCREENSHOT"):
            shutil.copyfile(shot, REPO / os.environ["LIVEACT_SCREENSHOT"])
        blocks = page.text_content("#st-blocks")
        browser.close()
    print(
        f"\ntime to first frame (click -> first frame on screen, {MODEL} model, {SIZE[0]}x{SIZE[1]} on CPU): "
        f"{first_frame:.2f} s; blocks {blocks}"
    )
    assert shot.stat().st_size > 10_000


def test_microphone_job_streams_while_speaking(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    image = portrait(tmp_path / "face.png")
    voice = speech_wav(tmp_path / "voice.wav", 30.0, rate=48000)  # the fake device loops it
    flags = [
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={voice}",
        "--use-fake-ui-for-media-stream",
    ]
    with sync_playwright() as p:
        browser = launch(p, tmp_path / "profile", flags)
        browser.grant_permissions(["microphone"])
        page = browser.new_page()
        page.goto(server)
        page.set_input_files("#image", str(image))
        page.check('input[name="mode"][value="mic"]')
        page.click("#start")
        page.wait_for_function("window.liveactStats.firstFrameMs !== null", timeout=180_000)
        first_frame = page.evaluate("window.liveactStats.firstFrameMs") / 1000
        job_id = page.evaluate("window.liveactStats.jobId")
        chunks_then = page.evaluate("window.liveactStats.micChunks")
        frames_then = page.evaluate("window.liveactStats.frames.length")
        # Later blocks are generated while the microphone keeps sending (generous deadline: the
        # model's block time depends on how busy the CPU is). Poll the job, not the on-screen frame
        # count: the first block alone holds many frames, which play out over more than a second.
        deadline = time.monotonic() + 180
        job = page.evaluate(f"fetch('/api/jobs/{job_id}').then(r => r.json())")
        while job["blocks_done"] < MIC_BLOCKS and job["status"] == "running" and time.monotonic() < deadline:
            page.wait_for_timeout(250)
            job = page.evaluate(f"fetch('/api/jobs/{job_id}').then(r => r.json())")
        page.wait_for_function(f"window.liveactStats.frames.length > {frames_then}", timeout=60_000)
        chunks_now = page.evaluate("window.liveactStats.micChunks")
        assert chunks_now > chunks_then > 0
        assert job["kind"] == "live" and job["status"] == "running" and job["blocks_done"] >= MIC_BLOCKS, job
        assert job["silence_seconds"] < 1.0, job  # the audio arrived in time: no silence filled in
        assert job["speech_latency"] is not None
        page.wait_for_function(
            f"(window.liveactStats.speechToScreen || []).length >= {MIC_BLOCKS - 1}", timeout=60_000
        )
        latencies = page.evaluate("window.liveactStats.speechToScreen")
        stats = page.evaluate(FRAME_STATS)
        assert stats["std"] > 5.0
        page.click("#stop")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = page.evaluate(f"fetch('/api/jobs/{job_id}').then(r => r.json()).then(j => j.status)")
            if status != "running":
                break
            page.wait_for_timeout(200)
        assert status == "cancelled"
        browser.close()
    print(
        f"\nmicrophone ({MODEL} model): first frame {first_frame:.2f} s after the click; "
        f"speech-to-screen latency "
        f"(median of {len(latencies)} blocks) {float(np.median(latencies)):.2f} s; "
        f"server block latency {job['speech_latency']} s; generation FPS {job['generation_fps']}"
    )
