"""generate.py input validation: every user error is one line, exit status 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO_ROOT
from PIL import Image

from liveact.cli import load_requests, main, parse_edit_range


@pytest.fixture()
def media(tmp_path: Path) -> Path:
    """A folder with a portrait, speech-like audio and odd files."""
    Image.fromarray(np.full((40, 30, 3), 128, np.uint8)).save(tmp_path / "face.png")
    t = np.arange(int(16000 * 1.5)) / 16000
    sf.write(
        tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)), 16000
    )
    sf.write(tmp_path / "silent.wav", np.zeros(16000 * 2), 16000)
    loud = 0.3 * np.sin(2 * np.pi * 220 * t)
    sf.write(tmp_path / "right_only.wav", np.stack([np.zeros_like(loud), loud], 1), 16000)
    loud[100], loud[200] = np.inf, np.nan
    sf.write(tmp_path / "inf.wav", loud.astype(np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", 0.3 * np.sin(2 * np.pi * 220 * t[:3200]), 16000)
    (tmp_path / "notes.txt").write_text("not audio, not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return tmp_path


def _job(folder: Path, entries: list | str, name: str = "jobs.json") -> Path:
    path = folder / name
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return path


def _entry(**kw: object) -> dict:
    return {"prompt": "A person talks.", "cond_image": "face.png", "cond_audio": "speech.wav", **kw}


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize(
    "entries, message",
    [
        ([_entry(cond_image="missing.png")], "entry 0: cond_image file not found: .*missing.png"),
        ([_entry(cond_image="broken.png")], "entry 0: cond_image .*broken.png is not a readable image"),
        ([_entry(cond_audio="notes.txt")], "entry 0: cond_audio .*notes.txt: not a readable audio file"),
        (
            [_entry(cond_audio="silent.wav")],
            "entry 0: cond_audio [^ ]*silent.wav is silent \\(peak below -80 dBFS\\)",
        ),
        (
            [_entry(cond_audio="inf.wav")],
            "entry 0: cond_audio [^ ]*inf.wav: holds 2 non-finite sample\\(s\\)",
        ),
        (
            [_entry(cond_audio="right_only.wav")],
            "entry 0: cond_audio [^ ]*right_only.wav: channel 0 is silent .* pass --downmix",
        ),
        ([_entry(cond_image=".")], "entry 0: cond_image .* is a folder; give the path of a file"),
        ([_entry(cond_audio=".")], "entry 0: cond_audio .* is a folder; give the path of a file"),
        (
            [_entry(cond_audio="short.wav")],
            "entry 0: cond_audio .*short.wav is 0.20 s long; at least \\d\\.\\d\\d s \\(the first block",
        ),
        ('[{"prompt": "x",', "is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ([], "non-empty JSON list"),
        ([_entry(), {"prompt": "only a prompt"}], "entry 1: field 'cond_image' is missing"),
        (
            [_entry(edit_prompt={"[3, 1]": "smile"})],
            "entry 0: edit range '\\[3, 1\\]' needs 0 <= first <= last",
        ),
        ([_entry(edit_prompt={"3 to 4": "smile"})], "entry 0: edit range '3 to 4' must look like"),
        (
            [_entry(edit_prompt={"[0, 1]": ""})],
            "entry 0: edit_prompt '\\[0, 1\\]' must map to a non-empty prompt",
        ),
    ],
)
def test_bad_inputs_give_one_line_errors(
    media: Path, capsys: pytest.CaptureFixture, entries, message: str
) -> None:
    rc, err = _run(capsys, "--input_json", str(_job(media, entries)))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    import re

    assert re.search(message, lines[0]), lines[0]
    assert ":;" not in lines[0]
    for name in ("silent.wav", "notes.txt", "short.wav"):
        assert lines[0].count(name) <= 1, lines[0]  # the file is named once, not repeated


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--size", "500*832"], "multiples of 16"),
        (["--size", "big"], "must be WIDTH\\*HEIGHT"),
        (["--fps", "0"], "--fps must be > 0"),
        (["--fps", "-5"], "--fps must be > 0"),
        (["--audio_cfg", "0.5"], "--audio_cfg must be finite and >= 1"),
        (["--audio_cfg", "inf"], "--audio_cfg must be finite and >= 1"),
        (["--audio_cfg", "nan"], "--audio_cfg must be finite and >= 1"),
        (["--edit_cfg", "0.5"], "--edit_cfg must be finite and >= 1"),
        (["--edit_cfg", "nan"], "--edit_cfg must be finite and >= 1"),
        (["--max_blocks", "0"], "--max_blocks must be >= 1"),
        (["--seed", str(2**70)], "--seed must be between 0 and 2\\*\\*63 - 1"),
        (["--seed", "-1"], "--seed must be between 0"),
        (["--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_bad_flags(media: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str) -> None:
    import re

    rc, err = _run(capsys, "--input_json", str(_job(media, [_entry()])), *flags)
    assert rc == 2 and re.search(message, err), err


@pytest.mark.parametrize("where", ["face.png/sub", "/dev/null/x", "readonly/out"])
def test_unwritable_output_folders_are_refused_before_loading(
    media: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    import os

    (media / "readonly").mkdir()
    os.chmod(media / "readonly", 0o500)
    if where.startswith("readonly") and os.access(media / "readonly", os.W_OK):
        pytest.skip("running as a user who may write into a read-only folder (root)")
    loaded = []
    monkeypatch.setattr("liveact.runtime.build", lambda spec: loaded.append(spec))
    out = where if where.startswith("/") else str(media / where)
    rc, err = _run(capsys, "--input_json", str(_job(media, [_entry()])), "--output_dir", out)
    assert rc == 2 and "cannot be written" in err and err.count("\n") <= 2, err
    assert loaded == [], "refused before any model loads"


def test_a_second_run_into_the_same_file_refuses_before_loading(
    media: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs into one mp4 corrupted it; now the second one stops, naming the first one's pid."""
    import os

    from liveact.cli import OutputLocks

    out = media / "out"
    out.mkdir()
    target = out / "face_speech.mp4"
    loaded = []
    monkeypatch.setattr("liveact.runtime.build", lambda spec: loaded.append(spec))
    first = OutputLocks([target])  # the first run, still writing
    try:
        argv = ["--input_json", str(_job(media, [_entry()])), "--output_dir", str(out), "--overwrite"]
        rc, err = _run(capsys, *argv)
        assert rc == 2 and f"being written by another run (pid {os.getpid()})" in err, err
        assert loaded == []
    finally:
        first.release()
    assert not list(out.glob(".*.lock")), "a finished run leaves no lock file"
    again = OutputLocks([target])  # free again once the first run is done
    again.release()


def test_downmix_listens_to_every_channel(media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--downmix: the right-only file passes the checks and the pipeline is built to downmix."""
    built = []

    def build(spec: object) -> None:
        built.append(spec)
        raise RuntimeError("stop: the run is assembled")

    monkeypatch.setattr("liveact.runtime.build", build)
    job = _job(media, [_entry(cond_audio="right_only.wav")])
    with pytest.raises(RuntimeError, match="stop: the run is assembled"):
        main(["--input_json", str(job), "--output_dir", str(media / "out"), "--downmix"])
    assert built and built[0].downmix


def test_a_write_error_mid_run_is_one_line_and_says_what_is_on_disk(
    media: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills (ffmpeg exits) after the first block: exit 2, one error line, no traceback."""
    from liveact.video import FFmpegError, ProgressiveVideoWriter

    original = ProgressiveVideoWriter.write
    calls = []

    def write(writer: ProgressiveVideoWriter, frames: object) -> int:
        calls.append(1)
        if len(calls) > 1:
            raise FFmpegError("ffmpeg exited with status 1 while writing x.mp4:\nNo space left on device")
        return original(writer, frames)

    monkeypatch.setattr(ProgressiveVideoWriter, "write", write)
    argv = [
        "--input_json",
        str(_job(media, [_entry()])),
        "--output_dir",
        str(media / "out"),
        "--max_blocks",
        "2",
    ]
    rc, err = _run(capsys, *argv)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and "holds the first 21 frames" in lines[0], lines[0]


def test_missing_model_is_said_clearly(
    media: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An install without the embedded model (e.g. a trimmed wheel) says so and names the flag.
    monkeypatch.setattr("liveact.components.nano.default_model_dir", lambda: media / "no-model")
    rc, err = _run(capsys, "--input_json", str(_job(media, [_entry()])), "--output_dir", str(media / "out"))
    assert rc == 2 and "no embedded model" in err and "--ckpt_dir" in err, err
    # An official folder needs the wav2vec2 folder too.
    rc, err = _run(
        capsys,
        "--input_json",
        str(_job(media, [_entry()])),
        "--output_dir",
        str(media / "out"),
        "--ckpt_dir",
        str(media),
    )
    assert rc == 2 and "--wav2vec_dir" in err, err


def _fake_wav2vec(folder: Path) -> Path:
    """The two config files of a transformers wav2vec2 folder (enough to be recognised as one)."""
    folder.mkdir()
    config = {"model_type": "wav2vec2", "architectures": ["Wav2Vec2Model"]}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000}))
    return folder


def test_wav2vec_folder_as_ckpt_dir_is_named(media: Path, capsys: pytest.CaptureFixture) -> None:
    w2v = _fake_wav2vec(media / "chinese-wav2vec2-base")
    rc, err = _run(
        capsys,
        "--input_json",
        str(_job(media, [_entry()])),
        "--output_dir",
        str(media / "out"),
        "--ckpt_dir",
        str(w2v),
        "--wav2vec_dir",
        str(w2v),
        "--device",
        "cpu",
    )
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: --ckpt_dir {w2v} is a wav2vec2 folder, not the LiveAct checkpoint")
    assert "pass it as --wav2vec_dir" in lines[0]


def test_missing_asset_files_are_listed_on_one_line(media: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = media / "ckpt"
    ckpt.mkdir()
    w2v = _fake_wav2vec(media / "w2v")
    (w2v / "model.safetensors").write_bytes(b"")  # only its presence is checked before loading
    rc, err = _run(
        capsys,
        "--input_json",
        str(_job(media, [_entry()])),
        "--output_dir",
        str(media / "out"),
        "--ckpt_dir",
        str(ckpt),
        "--wav2vec_dir",
        str(w2v),
        "--device",
        "cpu",
    )
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert ":;" not in lines[0] and "Wan2.1_VAE.pth" in lines[0], lines[0]
    expected = f"error: --ckpt_dir: 6 asset file(s) missing: {ckpt / 'config.json'} ("
    assert lines[0].startswith(expected), lines[0]


def test_input_json_is_required(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2 and "--input_json" in capsys.readouterr().err


def test_help_shows_defaults() -> None:
    from liveact.cli import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "seed of the sampling noise" in text and "(default: 42)" in text
    assert "default: the model's own; 480*832 for the official folders" in text and "--overwrite" in text
    assert "default: the embedded LiveAct-Nano" in text and "(default: None)" not in text


def test_colliding_output_names_get_the_entry_index(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from liveact.cli import output_paths
    from liveact.pipeline import Request

    def req(image: str, audio: str) -> Request:
        return Request(image=image, audio=audio, prompt="p")

    names = [
        p.name
        for p in output_paths(tmp_path, [req("a.png", "s.wav"), req("b.png", "s.wav"), req("a.png", "s.wav")])
    ]
    assert names == ["a_s_0.mp4", "b_s.mp4", "a_s_2.mp4"]
    assert "a_s.mp4" in caplog.text and "a_s_2.mp4" in caplog.text
    # A suffixed name that equals another entry's own name is suffixed again.
    names = [
        p.name
        for p in output_paths(
            tmp_path, [req("a.png", "s.wav"), req("a.png", "s.wav"), req("a.png", "s_1.wav")]
        )
    ]
    assert names == ["a_s_0.mp4", "a_s_1_1.mp4", "a_s_1_2.mp4"]


def test_existing_output_is_never_replaced_without_overwrite(
    media: Path, capsys: pytest.CaptureFixture
) -> None:
    out = media / "out"
    out.mkdir()
    (out / "face_speech.mp4").write_bytes(b"an earlier result")
    rc, err = _run(capsys, "--input_json", str(_job(media, [_entry()])), "--output_dir", str(out))
    assert rc == 2 and "face_speech.mp4 already exist" in err and "--overwrite" in err, err
    assert (out / "face_speech.mp4").read_bytes() == b"an earlier result"
    # With --overwrite the run goes on (on the embedded model) and replaces the file with a new video.
    rc, err = _run(
        capsys,
        "--input_json",
        str(_job(media, [_entry()])),
        "--output_dir",
        str(out),
        "--overwrite",
        "--max_blocks",
        "1",
    )
    assert rc == 0 and "already exist" not in err, err
    assert (out / "face_speech.mp4").read_bytes()[4:8] == b"ftyp"


def test_interruption_messages_say_what_is_on_disk(tmp_path: Path) -> None:
    from liveact.cli import RunState

    state = RunState(fps=24)
    assert state.interrupted_message() == "interrupted while checking the inputs: no new video was written"
    state.current = tmp_path / "a.mp4"
    message = state.interrupted_message()
    assert "before the first block" in message and "not written" in message and "playable" not in message
    state.current_existed = True
    assert "the existing file is unchanged" in state.interrupted_message()
    state.current_frames = 53
    message = state.interrupted_message()
    assert f"{tmp_path / 'a.mp4'} holds the first 53 frames (2.21 s) and plays" in message
    state.finished = [tmp_path / "0.mp4"]
    assert message + f"; finished before: {tmp_path / '0.mp4'}" == state.interrupted_message()
    assert RunState(is_main=False).interrupted_message() == "interrupted"


def test_summary_counts_in_words() -> None:
    from liveact.cli import ClipStats

    assert "(0.88 s of video, 1 block)" in ClipStats(frames=21, blocks=1, wall=2.0).summary(24, 0)
    assert "53 frames (2.21 s of video, 2 blocks)" in ClipStats(frames=53, blocks=2, wall=2.0).summary(24, 0)


def test_log_lines_go_through_tqdm_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Log records are written with tqdm.write, which clears and redraws an active bar around them."""
    import logging

    from tqdm import tqdm

    from liveact.cli import TqdmLoggingHandler

    written = []
    monkeypatch.setattr(tqdm, "write", classmethod(lambda cls, s, file=None, **kw: written.append((s, file))))
    handler = TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(logging.LogRecord("liveact", logging.INFO, __file__, 1, "block 2/5 done", None, None))
    assert written == [("block 2/5 done", sys.stderr)]


def test_relative_paths_resolve_against_the_json_folder(media: Path, tmp_path: Path) -> None:
    sub = media / "jobs"
    sub.mkdir()
    job = _job(
        sub,
        [
            _entry(
                cond_image="../face.png",
                cond_audio=str(media / "speech.wav"),
                edit_prompt={"[0, 1]": "smile", "[1, 2]": "nod"},
            )
        ],
    )
    (request,) = load_requests(job)
    assert Path(request.image) == sub / "../face.png" and request.edits == [
        ((0, 1), "smile"),
        ((1, 2), "nod"),
    ]


def test_edit_range_parsing() -> None:
    assert parse_edit_range("[0, 4]", "x") == (0, 4) and parse_edit_range("(7, 8)", "x") == (7, 8)


def test_subprocess_error_has_no_traceback(media: Path) -> None:
    job = _job(media, [_entry(cond_audio="notes.txt")])
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "generate.py"), "--input_json", str(job)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    # The run's first log line (printed before torch loads), then the error on one line.
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 2, proc.stderr
    assert "checking" in lines[0] and lines[1].startswith("error: jobs.json entry 0: cond_audio"), proc.stderr
