"""What a user types, checked: :class:`UserError`, the parsers of sizes and edit ranges, and the
command-line pieces ``generate.py`` and ``demo.py`` share.

Kept free of heavy imports, so that a command line can refuse bad input before torch has loaded.
"""

from __future__ import annotations

import argparse
import ast


class UserError(ValueError):
    """Bad input from the user: reported as one line (exit status 2), with what to do about it."""


def parse_size(text: str, unit: int = 16) -> tuple[int, int]:
    """``"W*H"`` (width first; ``WxH`` too) -> ``(width, height)``, positive multiples of ``unit``.

    ``unit`` is the latent stride times the patch size: 16 for every LiveAct model.

    Raises:
        UserError: (a ``ValueError``) the text is not two positive multiples of ``unit``.
    """
    try:
        width, height = (int(v) for v in str(text).strip().replace("x", "*").split("*"))
    except ValueError:
        raise UserError(f"size {str(text)[:40]!r} must be WIDTH*HEIGHT, e.g. 480*832 (width first)") from None
    if width <= 0 or height <= 0 or width % unit or height % unit:
        raise UserError(f"size {width}*{height}: width and height must be positive multiples of {unit}")
    return width, height


def parse_edit_range(key: str, where: str) -> tuple[int, int]:
    """``"[a, b]"`` -> ``(a, b)`` with ``0 <= a <= b`` (inclusive block indices of an edit prompt).

    Raises:
        UserError: ``key`` is not two integers in order; the message starts with ``where``.
    """
    try:
        value = ast.literal_eval(key)
    except (ValueError, SyntaxError):
        value = None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise UserError(f'{where}: edit range {key!r} must look like "[first_block, last_block]"')
    first, last = value
    if not 0 <= first <= last:
        raise UserError(f"{where}: edit range {key!r} needs 0 <= first <= last")
    return first, last


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, unless its help already says it or there is none (None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def add_compile_flag(parser: argparse.ArgumentParser) -> None:
    """``--compile``, shared by generate.py and demo.py (the modes: ``liveact.runtime.RunSpec``)."""
    parser.add_argument(
        "--compile",
        default="off",
        choices=["off", "islands", "regional", "cudagraphs"],
        help="torch.compile: islands = fp32 islands and FP8 quantisation; regional = also every DiT "
        "block; cudagraphs = islands + steady-state steps replayed as CUDA graphs (CUDA, no offload)",
    )
