"""``demo.py`` command line: flags parse like the authors' demo, bad input ends with one error line."""

from __future__ import annotations

import pytest

from liveact.serve.cli import main, parse_args


def test_defaults_are_safe_and_match_the_authors() -> None:
    args = parse_args([])
    assert args.host == "127.0.0.1"  # never the LAN unless asked
    assert args.port == 5001 and args.seed == 42
    assert args.size is None and args.fps is None  # the model's own (720*416 / 24 for official folders)
    assert args.ckpt_dir is None  # optional: the embedded default model when it ships
    assert parse_args(["--fp8_kv_cache", "--block_offload", "--t5_cpu"]).block_offload


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "--ckpt_dir"),  # no default model yet: say what to pass
        (["--size", "100*100"], "multiples of 16"),
        (["--fps", "0"], "--fps"),
        (["--queue_size", "-1"], "--queue_size"),
    ],
)
def test_bad_input_is_one_error_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture, tmp_path: object
) -> None:
    assert main(argv + ["--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
