"""generate.py input validation: every user error is one line, exit status 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from conftest import REPO_ROOT
from liveact.cli import load_requests, main, parse_edit_range


@pytest.fixture()
def media(tmp_path: Path) -> Path:
    """A folder with a portrait, speech-like audio and odd files."""
    Image.fromarray(np.full((40, 30, 3), 128, np.uint8)).save(tmp_path / "face.png")
    t = np.arange(int(16000 * 1.5)) / 16000
    sf.write(tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)), 16000)
    sf.write(tmp_path / "silent.wav", np.zeros(16000 * 2), 16000)
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
        ([_entry(cond_audio="silent.wav")], "entry 0: cond_audio .*silent.wav: .*silent"),
        ([_entry(cond_audio="short.wav")], "entry 0: cond_audio .*short.wav is 0.20 s long; at least 0.88 s"),
        ("[{\"prompt\": \"x\",", "is not valid JSON"),
        ([], "non-empty JSON list"),
        ([_entry(), {"prompt": "only a prompt"}], "entry 1: field 'cond_image' is missing"),
        ([_entry(edit_prompt={"[3, 1]": "smile"})], "entry 0: edit range '\\[3, 1\\]' needs 0 <= first <= last"),
        ([_entry(edit_prompt={"3 to 4": "smile"})], "entry 0: edit range '3 to 4' must look like"),
        ([_entry(edit_prompt={"[0, 1]": ""})], "entry 0: edit_prompt '\\[0, 1\\]' must map to a non-empty prompt"),
    ],
)
def test_bad_inputs_give_one_line_errors(media: Path, capsys: pytest.CaptureFixture, entries, message: str) -> None:  # noqa: ANN001
    rc, err = _run(capsys, "--input_json", str(_job(media, entries)))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    import re

    assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--size", "500*832"], "multiples of 16"),
        (["--size", "big"], "must be WIDTH\\*HEIGHT"),
        (["--fps", "0"], "--fps must be > 0"),
        (["--fps", "-5"], "--fps must be > 0"),
        (["--audio_cfg", "0.5"], "--audio_cfg must be >= 1"),
        (["--max_blocks", "0"], "--max_blocks must be >= 1"),
    ],
)
def test_bad_flags(media: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str) -> None:
    import re

    rc, err = _run(capsys, "--input_json", str(_job(media, [_entry()])), *flags)
    assert rc == 2 and re.search(message, err), err


def test_missing_model_is_said_clearly(media: Path, capsys: pytest.CaptureFixture) -> None:
    rc, err = _run(capsys, "--input_json", str(_job(media, [_entry()])))
    assert rc == 2 and "--ckpt_dir" in err


def test_relative_paths_resolve_against_the_json_folder(media: Path, tmp_path: Path) -> None:
    sub = media / "jobs"
    sub.mkdir()
    job = _job(sub, [_entry(cond_image="../face.png", cond_audio=str(media / "speech.wav"),
                            edit_prompt={"[0, 1]": "smile", "[1, 2]": "nod"})])
    (request,) = load_requests(job)
    assert Path(request.image) == sub / "../face.png" and request.edits == [((0, 1), "smile"), ((1, 2), "nod")]


def test_edit_range_parsing() -> None:
    assert parse_edit_range("[0, 4]", "x") == (0, 4) and parse_edit_range("(7, 8)", "x") == (7, 8)


def test_subprocess_error_has_no_traceback(media: Path) -> None:
    job = _job(media, [_entry(cond_audio="notes.txt")])
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "generate.py"), "--input_json", str(job)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("error:"), proc.stderr
