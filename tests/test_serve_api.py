"""The demo's HTTP/WebSocket API on the tiny asset folder (in-process, Starlette's TestClient).

Bad uploads (not an image, not audio, oversized, malformed), path traversal in every field and id,
unknown ids, a second job while busy (429) and the visible queue, a job that fails (reported; the
server goes on), cancel (running and queued), the live stream's bytes, and a live job fed over the
audio WebSocket.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from tiny_assets import write_tiny_assets

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from liveact.pipeline import LiveActPipeline
from liveact.serve.app import ServeOptions, create_app
from liveact.serve.engine import Engine, JobSpec
from liveact.video import probe_video

SIZE = (32, 32)
FPS = 25
RATE = 16000


class ControlledPipeline:
    """The real tiny pipeline behind a gate (hold a job at its first block) and a failure switch."""

    _own = ("_pipe", "gate", "fail_at", "blocks_started")

    def __init__(self, pipe: LiveActPipeline) -> None:
        object.__setattr__(self, "_pipe", pipe)
        object.__setattr__(self, "gate", threading.Event())
        object.__setattr__(self, "fail_at", None)
        object.__setattr__(self, "blocks_started", 0)
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._own:
            object.__setattr__(self, name, value)
        else:
            setattr(self._pipe, name, value)

    def stream(self, clip: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        for k, block in enumerate(self._pipe.stream(clip, **kwargs)):
            object.__setattr__(self, "blocks_started", self.blocks_started + 1)
            if self.fail_at == k:
                raise RuntimeError(f"injected failure at block {k}")
            assert self.gate.wait(60), "test gate never opened"
            yield block


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> ControlledPipeline:
    ckpt, w2v = write_tiny_assets(tmp_path_factory.mktemp("tiny_serve"), seed=0)
    real = LiveActPipeline.from_pretrained(
        ckpt, w2v, device="cpu", dtype=torch.float32, size=SIZE, fps=FPS, stream_audio=True
    )
    return ControlledPipeline(real)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve_root")


def _client(pipe: ControlledPipeline, root: Path, queue_size: int) -> Iterator[TestClient]:
    # A long live grace: the live test sends in bursts and must not get silence inserted between them.
    engine = Engine(
        pipe,
        "tiny",
        queue_size=queue_size,
        live_connect_grace=30,
        live_grace=30,  # type: ignore[arg-type]
        unwatched_grace=0.3,
    )
    options = ServeOptions(
        data_dir=root / f"data_q{queue_size}",
        size=SIZE,
        fps=FPS,
        max_image_mb=1,
        max_audio_mb=1,
        max_audio_seconds=30,
        host_names=("testserver",),  # the name TestClient sends
    )
    with TestClient(create_app(engine, options)) as client:
        client.engine = engine  # type: ignore[attr-defined]
        client.data_dir = options.data_dir  # type: ignore[attr-defined]
        yield client
    engine.close()


@pytest.fixture(scope="module")
def client(pipe: ControlledPipeline, root: Path) -> Iterator[TestClient]:
    yield from _client(pipe, root, queue_size=0)


@pytest.fixture(autouse=True)
def reset(pipe: ControlledPipeline) -> Iterator[None]:
    pipe.gate.set()
    pipe.fail_at = None
    yield
    pipe.gate.set()
    pipe.fail_at = None


def png_bytes(size: tuple[int, int] = (40, 48)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 2.0) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), RATE, format="WAV")
    return buf.getvalue()


def submit(client: TestClient, image: bytes | None = None, audio: bytes | None = None, **fields: str) -> Any:
    files = {}
    if image is not None:
        files["image"] = ("face.png", image, "image/png")
    if audio is not None:
        files["audio"] = ("speech.wav", audio, "audio/wav")
    return client.post("/api/jobs", files=files, data=fields)


def wait_status(client: TestClient, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/jobs/{job_id}").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}: {body}")


def wait_idle(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/api/health").json()["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- happy path


def test_health(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["model"] == "tiny" and body["busy"] is False


def test_job_runs_streams_and_downloads(client: TestClient) -> None:
    res = submit(
        client, png_bytes(), wav_bytes(2.0), prompt="A person talks.", edits='[[1, 1, "She smiles."]]'
    )
    assert res.status_code == 201, res.text
    job_id = res.json()["id"]
    chunks: list[bytes] = []
    with client.websocket_connect(f"/api/jobs/{job_id}/stream") as ws:
        init = ws.receive_json()
        assert init["type"] == "init" and "avc1" in init["mime"] and "mp4a" in init["mime"]
        while True:
            message = ws.receive()
            if message.get("bytes") is not None:
                chunks.append(message["bytes"])
            elif message.get("text"):
                end = json.loads(message["text"])
                break
    assert end == {"type": "end", "status": "finished", "error": None}
    body = wait_status(client, job_id, ("finished",))
    assert body["blocks_done"] == body["blocks_total"] == 2  # int(2.0 / (32/25)) + 1
    video = client.get(f"/api/jobs/{job_id}/video")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert b"".join(chunks) == video.content  # the live stream is the downloadable file
    path = client.data_dir / "jobs" / job_id / "video.mp4"  # type: ignore[attr-defined]
    info = probe_video(path)
    assert info["has_audio"] and info["num_frames"] == 50  # 2.0 s * 25 fps, trimmed to the audio
    assert abs(info["audio_duration"] - 2.0) < 0.05


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("host", ["evil.example:5077", "evil.example", "localhost.evil.example", ""])
def test_dns_rebinding_unknown_host_names_are_refused(client: TestClient, host: str) -> None:
    """What a rebinding page sends: its own name as Host, and a matching Origin."""
    headers = {"host": host, "origin": f"http://{host}"}
    assert client.get("/api/health", headers=headers).status_code == 400
    res = client.post("/api/jobs", headers=headers, files={"image": ("a.png", png_bytes())})
    assert res.status_code == 400 and "unknown Host" in res.json()["error"]
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/api/jobs/0/stream", headers=headers):
        pass


@pytest.mark.parametrize("host", ["127.0.0.1:5001", "[::1]:5001", "192.168.1.20:5001", "localhost:5001"])
def test_ip_addresses_and_localhost_are_served(client: TestClient, host: str) -> None:
    assert client.get("/api/health", headers={"host": host}).status_code == 200


def test_not_an_image(client: TestClient) -> None:
    res = submit(client, b"this is not a png at all", wav_bytes())
    assert res.status_code == 415 and "image" in res.json()["error"]


def test_not_audio(client: TestClient) -> None:
    res = submit(client, png_bytes(), b"RIFF\x00\x00\x00\x00WAVEgarbage" * 20)
    assert res.status_code == 415 and "audio" in res.json()["error"]


def test_oversized_upload(client: TestClient) -> None:
    res = submit(client, png_bytes() + b"\x00" * (2 << 20), wav_bytes())
    assert res.status_code == 413 and "image" in res.json()["error"]
    res = submit(client, png_bytes(), wav_bytes(40.0))  # 1.28 MB > 1 MiB audio limit
    assert res.status_code == 413


def test_not_multipart_and_missing_fields(client: TestClient) -> None:
    assert client.post("/api/jobs", json={"image": "x"}).status_code == 415
    res = submit(client, None, wav_bytes())
    assert res.status_code == 400 and "image" in res.json()["error"]
    res = submit(client, png_bytes(), None)
    assert res.status_code == 400 and "audio" in res.json()["error"]


@pytest.mark.parametrize(
    "field,value",
    [
        ("fps", "0"),
        ("fps", "abc"),
        ("size", "33*32"),
        ("size", "4096*4096"),
        ("edits", "{"),
        ("edits", '[[2, 1, "x"]]'),
        ("edits", '[[0, 1, ""]]'),
        ("edits", "[[0, " + "9" * 5000 + ', "x"]]'),  # past Python's int digit limit
        ("edits", "[" * 3000 + "]" * 3000),  # nested too deeply
        ("seed", "-1"),
        ("live", "maybe"),
    ],
)
def test_bad_fields(client: TestClient, field: str, value: str) -> None:
    res = submit(client, png_bytes(), wav_bytes(), **{field: value})
    assert res.status_code == 400, res.text
    assert field.split("_")[0] in res.json()["error"]


@pytest.mark.parametrize(
    "size, fps, reason",
    [((40, 32), FPS, "multiples of 16"), ((0, 32), FPS, "multiples of 16"), (SIZE, 0, "fps must be > 0")],
)
def test_a_job_spec_is_checked_by_the_pipeline_before_it_queues(
    client: TestClient, pipe: ControlledPipeline, tmp_path: Path, size: tuple, fps: int, reason: str
) -> None:
    """The Python API (no upload form in between) gets the pipeline's own size/fps rule."""
    spec = JobSpec(tmp_path, tmp_path / "face.png", tmp_path / "a.wav", "p", [], fps, size, 0)
    before = dict(client.engine.jobs)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=reason):
        client.engine.submit(spec)  # type: ignore[attr-defined]
    assert client.engine.jobs == before, "nothing was queued"  # type: ignore[attr-defined]
    assert (pipe.size, pipe.fps) == (SIZE, FPS), "the shared pipeline was not touched"


def test_non_finite_audio_is_refused_without_naming_server_paths(client: TestClient, root: Path) -> None:
    buf = io.BytesIO()
    wave = (0.3 * np.sin(np.arange(RATE * 2) / 5.0)).astype(np.float32)
    wave[10] = np.inf
    sf.write(buf, wave, RATE, format="WAV", subtype="FLOAT")
    res = submit(client, png_bytes(), buf.getvalue())
    assert res.status_code == 400 and "non-finite" in res.json()["error"], res.text
    assert str(root) not in res.text and "/" not in res.json()["error"]


def test_audio_that_decodes_too_large_is_refused_from_its_header(tmp_path: Path) -> None:
    """A decompression bomb: few bytes of FLAC, many channels at a high rate. Refused (413, saying which
    limit) from the header, before any sample is decoded."""
    from liveact.serve.uploads import UploadError, check_audio

    bomb = tmp_path / "bomb.flac"
    sf.write(bomb, np.zeros((192_000 * 3, 8), np.int16), 192_000, format="FLAC")  # 3 s, 8 ch, 192 kHz
    assert bomb.stat().st_size < 200_000, "compresses to almost nothing"
    with pytest.raises(UploadError) as info:
        check_audio(bomb, 0.5, 600, max_decoded_bytes=16 * 2**20)
    assert info.value.status == 413 and "8 channel(s) at 192000 Hz" in str(info.value), info.value
    assert "--max_decoded_mb" in str(info.value)
    speech = tmp_path / "speech.wav"
    sf.write(speech, (0.3 * np.sin(np.arange(RATE * 2) / 5.0)).astype(np.float32), RATE)
    assert check_audio(speech, 0.5, 600, max_decoded_bytes=16 * 2**20) == pytest.approx(2.0)


def test_speech_outside_channel_0_is_refused_at_upload(client: TestClient) -> None:
    buf = io.BytesIO()
    speech = (0.3 * np.sin(np.arange(RATE * 2) / 5.0)).astype(np.float32)
    sf.write(buf, np.stack([np.zeros_like(speech), speech], 1), RATE, format="WAV")
    res = submit(client, png_bytes(), buf.getvalue())
    assert res.status_code == 400 and "channel 0 is silent" in res.json()["error"], res.text
    assert "downmix=1" in res.json()["error"]
    res = submit(client, png_bytes(), buf.getvalue(), downmix="1")
    assert res.status_code == 201, res.text
    assert wait_status(client, res.json()["id"], ("finished", "failed"))["status"] == "finished"


def test_an_overlong_multipart_boundary_is_a_400(client: TestClient) -> None:
    boundary = "b" * 300
    body = f"--{boundary}\r\nContent-Disposition: form-data; name=prompt\r\n\r\nhi\r\n--{boundary}--\r\n"
    res = client.post(
        "/api/jobs", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert res.status_code == 400 and "boundary" in res.json()["error"], res.text


def test_silent_audio(client: TestClient) -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(RATE * 2, np.float32), RATE, format="WAV")
    res = submit(client, png_bytes(), buf.getvalue())
    assert res.status_code == 400 and "silent" in res.json()["error"]


TRAVERSAL = ["../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "..\\..\\windows", "%2e%2e"]


def _tree(path: Path) -> set[Path]:
    return set(path.rglob("*"))


def test_path_traversal_in_every_field(client: TestClient, root: Path, tmp_path: Path) -> None:
    before = _tree(root)
    evil = "../../../../" + str(tmp_path / "pwned")
    files = {
        "image": (evil + ".png", png_bytes(), "image/png"),
        "audio": (evil + ".wav", wav_bytes(), "audio/wav"),
    }
    res = client.post(
        "/api/jobs", files=files, data={"prompt": evil, "edits": json.dumps([[0, 1, evil]]), "seed": "7"}
    )
    assert res.status_code == 201, res.text  # strings are data: the job runs with them as text
    job_id = res.json()["id"]
    wait_status(client, job_id, ("finished",))
    # Numbers and sizes that are paths are refused.
    for field in ("fps", "size", "seed", "sample_rate", "live"):
        assert submit(client, png_bytes(), wav_bytes(), **{field: evil}).status_code == 400
    # A field *name* that is a path is refused too.
    assert submit(client, png_bytes(), wav_bytes(), **{evil: "1"}).status_code == 400
    res = client.post(
        "/api/jobs",
        files={"image": ("a.png", png_bytes(), "image/png"), evil: ("b.wav", wav_bytes(), "audio/wav")},
    )
    assert res.status_code == 400
    assert not (tmp_path / "pwned.png").exists() and not (tmp_path / "pwned.wav").exists()
    folder = client.data_dir / "jobs" / job_id  # type: ignore[attr-defined]
    assert sorted(p.name for p in folder.iterdir()) == ["audio.wav", "image", "video.mp4"]
    created = _tree(root) - before
    data_dir = client.data_dir.resolve()  # type: ignore[attr-defined]
    assert all(p.resolve().is_relative_to(data_dir) for p in created), created
    # Ids: anything but one of our ids is unknown, whatever it points at.
    for bad in TRAVERSAL + [job_id + "%2F..%2F" + job_id, job_id.upper(), job_id[:-1], job_id + "%00"]:
        for method, suffix in (("get", ""), ("get", "/video"), ("delete", "")):
            res = getattr(client, method)(f"/api/jobs/{bad}{suffix}")
            assert res.status_code == 404, (bad, suffix, res.status_code)
            assert "passwd" not in res.text and "root:" not in res.text


def test_unknown_ids(client: TestClient) -> None:
    unknown = "0" * 32
    assert client.get(f"/api/jobs/{unknown}").status_code == 404
    assert client.get(f"/api/jobs/{unknown}/video").status_code == 404
    assert client.delete(f"/api/jobs/{unknown}").status_code == 404
    assert client.get(f"/api/jobs/{unknown}").json() == {"error": "unknown job id"}
    for route in ("stream", "audio"):
        with client.websocket_connect(f"/api/jobs/{unknown}/{route}") as ws:
            message = ws.receive()
            assert message["type"] == "websocket.close" and message["code"] == 4404


# ------------------------------------------------------------------------------------ busy, fail, cancel


def test_second_job_while_busy_gets_429(client: TestClient, pipe: ControlledPipeline) -> None:
    pipe.gate.clear()
    first = submit(client, png_bytes(), wav_bytes()).json()["id"]
    wait_status(client, first, ("running",))
    res = submit(client, png_bytes(), wav_bytes())
    assert res.status_code == 429 and "busy" in res.json()["error"] and first in res.json()["error"]
    assert client.get(f"/api/jobs/{first}/video").status_code == 409
    pipe.gate.set()
    wait_status(client, first, ("finished",))
    assert submit(client, png_bytes(), wav_bytes()).status_code == 201
    wait_idle(client)


def test_failing_job_is_reported_and_server_goes_on(client: TestClient, pipe: ControlledPipeline) -> None:
    pipe.fail_at = 1
    job_id = submit(client, png_bytes(), wav_bytes()).json()["id"]
    body = wait_status(client, job_id, ("failed",))
    assert "injected failure at block 1" in body["error"] and body["blocks_done"] == 1
    assert client.get(f"/api/jobs/{job_id}/video").status_code == 409
    pipe.fail_at = None
    assert client.get("/api/health").json() == {
        **client.get("/api/health").json(),
        "status": "ok",
        "busy": False,
    }
    again = submit(client, png_bytes(), wav_bytes()).json()["id"]
    assert wait_status(client, again, ("finished", "failed"))["status"] == "finished"


def test_cancel_running_job(client: TestClient, pipe: ControlledPipeline) -> None:
    pipe.gate.clear()
    job_id = submit(client, png_bytes(), wav_bytes(4.0)).json()["id"]
    wait_status(client, job_id, ("running",))
    started = pipe.blocks_started
    res = client.delete(f"/api/jobs/{job_id}")
    assert res.status_code == 200 and res.json()["status"] in ("cancelling", "cancelled")
    pipe.gate.set()
    body = wait_status(client, job_id, ("cancelled",))
    assert body["blocks_done"] <= 1 and pipe.blocks_started - started <= 2  # stopped, not run to the end
    assert body["blocks_total"] == 4
    wait_idle(client)


def test_queue_is_visible_and_bounded(pipe: ControlledPipeline, root: Path) -> None:
    for client in _client(pipe, root, queue_size=1):
        pipe.gate.clear()
        first = submit(client, png_bytes(), wav_bytes()).json()["id"]
        wait_status(client, first, ("running",))
        second = submit(client, png_bytes(), wav_bytes())
        assert second.status_code == 201 and second.json()["status"] == "queued"
        assert second.json()["queue_position"] == 1
        assert client.get("/api/health").json()["queued"] == 1
        third = submit(client, png_bytes(), wav_bytes())
        assert third.status_code == 429
        # Cancel the queued one: it never runs.
        assert client.delete(f"/api/jobs/{second.json()['id']}").json()["status"] == "cancelled"
        pipe.gate.set()
        wait_status(client, first, ("finished",))
        assert client.get(f"/api/jobs/{second.json()['id']}").json()["blocks_done"] == 0


def test_closed_page_stops_its_job(client: TestClient, pipe: ControlledPipeline) -> None:
    """A job started by the page (stop_when_unwatched) stops when its viewer goes away."""
    pipe.gate.clear()
    job_id = submit(client, png_bytes(), wav_bytes(6.0), stop_when_unwatched="1").json()["id"]
    with client.websocket_connect(f"/api/jobs/{job_id}/stream"):
        wait_status(client, job_id, ("running",))
    time.sleep(0.5)  # past the grace, with no viewer
    pipe.gate.set()
    body = wait_status(client, job_id, ("cancelled", "finished"))
    assert body["status"] == "cancelled" and body["blocks_done"] < body["blocks_total"]
    wait_idle(client)


def test_cross_origin_requests_are_refused(client: TestClient) -> None:
    files = {"image": ("a.png", png_bytes(), "image/png"), "audio": ("a.wav", wav_bytes(), "audio/wav")}
    res = client.post("/api/jobs", files=files, headers={"Origin": "http://evil.example"})
    assert res.status_code == 403
    assert (
        client.delete("/api/jobs/" + "0" * 32, headers={"Origin": "http://evil.example"}).status_code == 403
    )
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect(
            "/api/jobs/" + "0" * 32 + "/audio", headers={"Origin": "http://evil.example"}
        ),
    ):
        pass  # the handshake is refused
    # Same origin (the page itself) is fine.
    assert client.get("/api/health", headers={"Origin": "http://evil.example"}).status_code == 200
    res = client.delete("/api/jobs/" + "0" * 32, headers={"Origin": "http://testserver"})
    assert res.status_code == 404


# ---------------------------------------------------------------------------------------------- live


def test_live_job_over_websocket(client: TestClient) -> None:
    res = submit(client, png_bytes(), None, live="1", sample_rate=str(RATE), prompt="A person talks.")
    assert res.status_code == 201, res.text
    job_id = res.json()["id"]
    assert res.json()["kind"] == "live" and res.json()["audio_url"] == f"/api/jobs/{job_id}/audio"
    t = np.arange(int(2.5 * RATE)) / RATE
    pcm = (0.3 * np.sin(2 * np.pi * 200 * t) * 32767).astype("<i2")
    received = []
    with (
        client.websocket_connect(f"/api/jobs/{job_id}/stream") as view,
        client.websocket_connect(f"/api/jobs/{job_id}/audio?format=s16le") as mic,
    ):
        step = RATE // 10
        for i in range(0, int(1.5 * RATE), step):  # the first 1.5 s, then wait for video
            mic.send_bytes(pcm[i : i + step].tobytes())
        init = view.receive_json()
        assert init["type"] == "init"
        received.append(view.receive_bytes())  # frames arrive while audio is still being sent
        for i in range(int(1.5 * RATE), pcm.size, step):
            mic.send_bytes(pcm[i : i + step].tobytes())
        mic.send_text("end")
        while True:
            message = view.receive()
            if message.get("text"):
                assert json.loads(message["text"])["status"] == "finished"
                break
            received.append(message["bytes"])
    body = wait_status(client, job_id, ("finished",))
    # 2.5 s at 25 fps = 62.5 frames: blocks of 21 + 32 + 32 frames, the last one cut at frame 63.
    assert body["blocks_done"] == 3 and body["frames_done"] == 63 and body["speech_latency"] is not None
    info = probe_video(client.data_dir / "jobs" / job_id / "video.mp4")  # type: ignore[attr-defined]
    assert info["has_audio"] and info["num_frames"] == 63
    assert abs(info["audio_duration"] - 63 / FPS) < 0.05


def test_a_refused_audio_socket_ends_its_live_job_at_once(client: TestClient) -> None:
    res = submit(client, png_bytes(), None, live="1", sample_rate=str(RATE), prompt="A person talks.")
    job_id = res.json()["id"]
    url = f"/api/jobs/{job_id}/audio?format=u8"
    with pytest.raises(WebSocketDisconnect) as info, client.websocket_connect(url) as mic:
        mic.receive_text()
    assert info.value.code == 4400
    # The engine waits 30 s (live_connect_grace) for a socket that never comes; a refused one ends it now.
    body = wait_status(client, job_id, ("cancelled", "finished"), timeout=15)
    assert body["status"] in ("cancelled", "finished")


def test_an_ended_job_keeps_no_ffmpeg_pipes(client: TestClient) -> None:
    """Ended jobs stay listed until eviction; their encoder's output pipes are closed when they end."""
    res = submit(client, png_bytes(), wav_bytes())
    job_id = res.json()["id"]
    assert wait_status(client, job_id, ("finished",))["status"] == "finished"
    stream = client.engine.jobs[job_id].stream  # type: ignore[attr-defined]
    assert stream is not None and stream.done
    deadline = time.monotonic() + 10
    while not (stream._proc.stdout.closed and stream._proc.stderr.closed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stream._proc.stdout.closed and stream._proc.stderr.closed
