"""``demo.py`` command line: flags parse like the authors' demo, bad input ends with one error line."""

from __future__ import annotations

import pytest

from liveact.serve.cli import main, parse_args


def test_defaults_are_safe_and_match_the_authors() -> None:
    args = parse_args([])
    assert args.host == "127.0.0.1"  # never the LAN unless asked
    assert args.port == 5001 and args.seed == 42
    assert args.size is None and args.fps is None  # the model's own (720*416 / 24 for official folders)
    assert args.ckpt_dir is None  # the embedded LiveAct-Nano
    assert parse_args(["--fp8_kv_cache", "--block_offload", "--t5_cpu"]).block_offload
    assert args.edit_cfg is None and parse_args(["--edit_cfg", "1"]).edit_cfg == 1.0  # None: the model's own


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--ckpt_dir", "no/such/folder"], "--ckpt_dir"),
        (["--size", "100*100"], "multiples of 16"),
        (["--fps", "0"], "--fps"),
        (["--queue_size", "-1"], "--queue_size"),
        (["--edit_cfg", "0.5"], "--edit_cfg"),
    ],
)
def test_bad_input_is_one_error_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture, tmp_path: object
) -> None:
    assert main(argv + ["--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_missing_embedded_model_is_one_error_line(
    capsys: pytest.CaptureFixture, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("liveact.components.nano.default_model_dir", lambda: tmp_path / "no-model")
    assert main(["--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no embedded model" in err[0] and "--ckpt_dir" in err[0]
