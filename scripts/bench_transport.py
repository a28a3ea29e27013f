"""Measure live-transport latency in headless Chromium: fragmented MP4 over a WebSocket into Media
Source Extensions (the demo's transport) vs WebRTC (aiortc), plus when the authors' HLS would first
be playable.

A synthetic source stands in for the model (so only the transport is measured): it hands over blocks
of 21 then 32 frames (the LiveAct block layout) at exactly real-time pace, starting 0.5 s after the
client connects. Every frame carries its index as a row of black/white squares; the page reads it
back from each presented frame (``requestVideoFrameCallback`` + canvas) and records when it was on
screen. Browser and server share a clock (one machine), so per block:

    added latency = time the block's first frame was presented - time the block was handed over

    python scripts/bench_transport.py --size 416*720 --blocks 8
    python scripts/bench_transport.py --transports mse        # without aiortc installed

Prints one line per transport (median / max added latency over blocks after the first, first-block
latency, frames presented) and a Markdown table for docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import queue
import statistics
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from fastapi import FastAPI, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liveact.serve.stream import FragmentedMP4Stream
from liveact.video import HLSWriter

logger = logging.getLogger("bench_transport")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # aiortc cannot resolve the mDNS names Chrome uses to hide local addresses.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
BITS = 12
START_DELAY = 0.5

PAGE = """<!doctype html><meta charset=utf-8><video id=v muted playsinline></video>\
<canvas id=c hidden></canvas>
<script>
const BITS = %(bits)d, results = window.results = {frames: [], error: null, done: false};
const v = document.getElementById('v'), c = document.getElementById('c'), \
g = c.getContext('2d', {willReadFrequently: true});
function decode() {
  c.width = v.videoWidth; c.height = v.videoHeight; g.drawImage(v, 0, 0);
  const cell = Math.floor(c.width / BITS); let index = 0;
  for (let b = 0; b < BITS; b++) {
    const p = g.getImageData(b * cell + (cell >> 1), cell >> 1, 1, 1).data;
    index = index * 2 + (p[0] + p[1] + p[2] > 384 ? 1 : 0);
  }
  return index;
}
function onFrame(now, meta) {
  results.frames.push([decode(), performance.timeOrigin + meta.expectedDisplayTime]);
  v.requestVideoFrameCallback(onFrame);
}
v.requestVideoFrameCallback(onFrame);
async function mse() {
  const ws = new WebSocket(`ws://${location.host}/mse`); ws.binaryType = 'arraybuffer';
  let sb = null; const pending = [];
  const pump = () => { if (!sb || sb.updating || !pending.length) return;
    const n = pending.reduce((a, b) => a + b.byteLength, 0), all = new Uint8Array(n); let at = 0;
    for (const p of pending.splice(0)) { all.set(p, at); at += p.byteLength; } sb.appendBuffer(all); };
  ws.onmessage = (ev) => {
    if (typeof ev.data === 'string') {
      const m = JSON.parse(ev.data); if (m.type !== 'init') { results.done = true; return; }
      const ms = new MediaSource(); v.src = URL.createObjectURL(ms);
      ms.addEventListener('sourceopen', () => { sb = ms.addSourceBuffer(m.mime);
        sb.addEventListener('updateend', () => { if (v.paused) \
v.play().catch(e => results.error = String(e)); pump(); }); pump(); });
      return;
    }
    pending.push(new Uint8Array(ev.data)); pump();
  };
}
async function webrtc() {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', {direction: 'recvonly'}); pc.addTransceiver('audio', {direction: 'recvonly'});
  pc.ontrack = (e) => { if (e.track.kind === 'video') { v.srcObject = new MediaStream([e.track]); \
v.play().catch(e => results.error = String(e)); } };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((r) => { if (pc.iceGatheringState === 'complete') r(); \
else pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
  const res = await fetch('/offer', {method: 'POST', headers: {'Content-Type': 'application/json'}, \
body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type})});
  await pc.setRemoteDescription(await res.json());
}
(location.hash === '#webrtc' ? webrtc() : mse()).catch((e) => results.error = String(e));
</script>"""


def frame_pattern(index: int, width: int, height: int) -> np.ndarray:
    """A smooth frame with ``index`` as a row of BITS black/white squares at the top: ``[H, W, 3]`` uint8."""
    ramp = np.linspace(60, 160, width, dtype=np.float32)[None, :, None]
    frame = np.broadcast_to(ramp + (index % 50), (height, width, 3)).astype(np.uint8).copy()
    cell = width // BITS
    for b in range(BITS):
        bit = (index >> (BITS - 1 - b)) & 1
        frame[:cell, b * cell : (b + 1) * cell] = 255 if bit else 0
    return frame


class BlockSource:
    """Hands over LiveAct-sized blocks at real-time pace on a thread; records the hand-over times."""

    def __init__(self, fps: int, blocks: int, width: int, height: int) -> None:
        self.fps, self.blocks, self.width, self.height = fps, blocks, width, height
        self.handoffs: list[tuple[int, float]] = []  # (first frame index, wall time)

    def run(self, sink: callable) -> None:
        start = time.time() + START_DELAY
        first = 0
        for k in range(self.blocks):
            count = 21 if k == 0 else 32
            due = start + first / self.fps
            time.sleep(max(0.0, due - time.time()))
            frames = np.stack([frame_pattern(first + i, self.width, self.height) for i in range(count)])
            self.handoffs.append((first, time.time()))
            sink(frames)
            first += count
        sink(None)


def make_app(args: argparse.Namespace, source_factory: callable):
    app = FastAPI()
    pcs = set()

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE % {"bits": BITS})

    @app.websocket("/mse")
    async def mse(ws: WebSocket) -> None:
        await ws.accept()
        source = source_factory()
        app.state.handoffs = source.handoffs
        stream = FragmentedMP4Stream(
            Path(tempfile.mkdtemp()) / "bench.mp4",
            fps=args.fps,
            width=args.width,
            height=args.height,
            sample_rate=16000,
        )
        rate, fed = 16000, [0]

        def sink(frames: np.ndarray | None) -> None:
            if frames is None:
                stream.close()
                return
            # Silence as the audio track, kept 0.1 s ahead of the frames like the demo does.
            shown = sum(21 if k == 0 else 32 for k in range(len(source.handoffs)))
            upto = round(rate * (shown / args.fps + 0.1))
            stream.write(frames, np.zeros(upto - fed[0], np.float32))
            fed[0] = upto

        threading.Thread(target=source.run, args=(sink,), daemon=True).start()
        await asyncio.to_thread(stream.wait_ready, 30)
        await ws.send_json({"type": "init", "mime": stream.mime})
        async for chunk in stream.follow():
            await ws.send_bytes(chunk)
        await ws.send_json({"type": "end"})

    @app.post("/offer")
    async def offer(request: dict) -> JSONResponse:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        source = source_factory()
        pc = RTCPeerConnection()
        pcs.add(pc)
        pc.addTrack(block_video_track(source, args.fps))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=request["sdp"], type=request["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        app.state.handoffs = source.handoffs
        logger.debug("answer: %s", pc.localDescription.sdp)
        return JSONResponse({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    @app.get("/handoffs")
    async def handoffs() -> JSONResponse:
        return JSONResponse(getattr(app.state, "handoffs", []))

    return app


def block_video_track(source: BlockSource, fps: int):
    """An aiortc video track that plays the source's blocks at ``fps`` as they arrive."""
    import av
    from aiortc import MediaStreamTrack

    class Track(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.frames: queue.Queue = queue.Queue()
            self.count = 0
            self.next_time: float | None = None
            threading.Thread(target=source.run, args=(self._put,), daemon=True).start()

        def _put(self, frames: np.ndarray | None) -> None:
            if frames is not None:
                for f in frames:
                    self.frames.put(f)

        async def recv(self) -> av.VideoFrame:
            frame = await asyncio.to_thread(self.frames.get)
            # Real-time pacing: never faster than fps, but a late block is sent at once.
            now = time.time()
            if self.next_time is not None and now < self.next_time:
                await asyncio.sleep(self.next_time - now)
            self.next_time = max(now, self.next_time or now) + 1 / fps
            out = av.VideoFrame.from_ndarray(frame, format="rgb24")
            out.pts, out.time_base = self.count, Fraction(1, fps)
            self.count += 1
            return out

    return Track()


def measure(transport: str, args: argparse.Namespace) -> dict:
    """Run one transport end to end in Chromium; returns its latencies."""
    import uvicorn
    from playwright.sync_api import sync_playwright

    app = make_app(args, lambda: BlockSource(args.fps, args.blocks, args.width, args.height))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    total = 21 + 32 * (args.blocks - 1)
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=args.chromium, headless=True, args=CHROMIUM_FLAGS
        )
        page = browser.new_page()
        page.on("console", lambda m: logger.info("page: %s", m.text))
        page.on("pageerror", lambda e: logger.error("page error: %s", e))
        page.goto(f"http://127.0.0.1:{port}/#{transport}")
        deadline = time.time() + START_DELAY + total / args.fps + 30
        while time.time() < deadline:
            frames = page.evaluate(
                "window.results.frames.length ? window.results.frames[window.results.frames.length-1][0] : -1"
            )
            if frames >= total - 1:
                break
            time.sleep(0.25)
        results = page.evaluate("window.results")
        browser.close()
    server.should_exit = True
    thread.join(10)
    handoffs = getattr(app.state, "handoffs", None)
    if handoffs is None:
        raise RuntimeError(f"{transport}: the page never started a stream: {results}")
    shown: dict[int, float] = {}
    for index, when in results["frames"]:
        shown.setdefault(index, when / 1000)
    latencies = [shown[first] - t for first, t in handoffs if first in shown]
    return {
        "transport": transport,
        "error": results["error"],
        "presented": len(shown),
        "total": total,
        "first_block": latencies[0] if latencies else None,
        "later": latencies[1:],
    }


def hls_first_playable(args: argparse.Namespace) -> float:
    """Seconds from the first block's hand-over until the authors' HLS playlist (1 s segments) exists."""
    with tempfile.TemporaryDirectory() as tmp:
        writer = HLSWriter(Path(tmp) / "live.m3u8", fps=args.fps, segment_seconds=1.0, list_size=5)
        source = BlockSource(args.fps, 3, args.width, args.height)
        done = threading.Event()
        start: list[float] = []

        def sink(frames: np.ndarray | None) -> None:
            if frames is None:
                done.set()
                return
            if not start:
                start.append(time.time())
            writer.write(frames)

        threading.Thread(target=source.run, args=(sink,), daemon=True).start()
        while not (Path(tmp) / "live.m3u8").exists():
            time.sleep(0.01)
        first = time.time() - start[0]
        done.wait(30)
        writer.close()
    return first


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="416*720", help="W*H of the frames")
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--transports", default="mse,webrtc")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("-v", action="store_true", help="debug log")
    args = p.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if "-v" in sys.argv else logging.INFO, format="%(name)s: %(message)s"
    )
    args.width, args.height = (int(v) for v in args.size.split("*"))
    rows = []
    for transport in args.transports.split(","):
        if transport == "webrtc":
            try:
                import aiortc  # noqa: F401
            except ImportError:
                print("webrtc: skipped (pip install aiortc)")
                continue
        r = measure(transport, args)
        later = r["later"] or [float("nan")]
        print(
            f"{transport}: first block {r['first_block']:.3f} s, "
            f"later blocks median {statistics.median(later):.3f} s "
            f"max {max(later):.3f} s, frames presented {r['presented']}/{r['total']}"
            + (f", error {r['error']}" if r["error"] else ""),
            flush=True,
        )
        rows.append(
            (transport, r["first_block"], statistics.median(later), max(later), r["presented"], r["total"])
        )
    hls = hls_first_playable(args)
    print(
        f"hls (authors' 1 s segments): playlist first exists {hls:.3f} s after the first block "
        "(a player then buffers ~3 segments more)"
    )
    print(
        "\n| transport | first block added latency | later blocks, median | later blocks, max "
        "| frames presented |"
    )
    print("|---|---|---|---|---|")
    for name, first, med, worst, shown, total in rows:
        print(f"| {name} | {first:.3f} s | {med:.3f} s | {worst:.3f} s | {shown}/{total} |")
    print(f"| hls (1 s segments) | >= {hls:.3f} s (first playlist) | | | |")
    print(json.dumps({"size": args.size, "fps": args.fps, "blocks": args.blocks}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
