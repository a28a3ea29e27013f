"""Multipart uploads streamed straight into a job folder, with size limits, and input checks.

Nothing a client sends becomes a path: file parts are written to fixed names the server chooses
(``image``, ``audio`` + an extension sniffed from the bytes) inside the job's folder under
``--data_dir``; the client's filename is ignored. Limits are enforced while the body streams, so an
oversized upload is cut off before it is stored, and the temporary files of a framework never exist.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from liveact.userinput import UserError, parse_size

logger = logging.getLogger(__name__)

FILE_FIELDS = ("image", "audio")
TEXT_LIMIT = 8192  # bytes of any text field
MAX_FIELDS = 16
MAX_EDITS = 64


class UploadError(Exception):
    """A bad request: ``status`` (400, 413, 415) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    """Parsed form: text fields and the stored files (server-chosen paths)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def sniff_audio_suffix(head: bytes) -> str:
    """File extension for stored audio from its first bytes (so the loader picks the right reader)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return ".wav"
    if head[:4] == b"fLaC":
        return ".flac"
    if head[:4] == b"OggS":
        return ".ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return ".mp3"
    return ".bin"  # anything else goes to ffmpeg, which probes the content


async def parse_upload(
    content_type: str, body: AsyncIterator[bytes], folder: Path, limits: dict[str, int]
) -> Upload:
    """Stream a ``multipart/form-data`` body into ``folder``.

    Args:
        content_type: the request's Content-Type header.
        body: the request body chunks.
        folder: the job folder (created by the caller).
        limits: byte limit per file field (``image``, ``audio``).

    Raises:
        UploadError: not multipart (415), unknown/duplicate/too many fields (400), too large (413).
    """
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError(415, "send multipart/form-data (fields: image, audio, prompt, edits, fps, ...)")
    if not 1 <= len(params[b"boundary"]) <= 70:  # RFC 2046: 1 to 70 characters
        raise UploadError(400, "the multipart boundary must be 1 to 70 characters long (RFC 2046)")
    upload = Upload()
    state: dict = {
        "headers": {},
        "field": b"",
        "value": b"",
        "name": None,
        "file": None,
        "size": 0,
        "text": bytearray(),
        "count": 0,
    }
    errors: list[UploadError] = []

    def fail(status: int, message: str) -> None:
        if not errors:
            errors.append(UploadError(status, message))

    def on_part_begin() -> None:
        state.update(headers={}, name=None, file=None, size=0, text=bytearray())
        state["count"] += 1
        if state["count"] > MAX_FIELDS:
            fail(400, f"too many form fields (at most {MAX_FIELDS})")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        is_file = b"filename" in disposition
        if name in upload.fields or name in upload.files:
            fail(400, f"field {name!r} given twice")
        elif is_file or name in FILE_FIELDS:
            if name not in FILE_FIELDS:
                fail(400, f"unexpected file field {name!r}; files go in 'image' and 'audio'")
            else:
                path = folder / name  # the suffix is added once the first bytes are known
                state["file"] = open(path, "wb")  # noqa: SIM115 - closed in on_part_end
                upload.files[name] = path

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if errors:
            return
        chunk = data[start:end]
        state["size"] += len(chunk)
        name = state["name"]
        if state["file"] is not None:
            if state["size"] > limits.get(name, 0):
                fail(413, f"{name} is larger than {limits.get(name, 0) // 2**20} MiB")
                return
            state["file"].write(chunk)
        else:
            if state["size"] > TEXT_LIMIT:
                fail(413, f"field {name!r} is longer than {TEXT_LIMIT} bytes")
                return
            state["text"] += chunk

    def on_part_end() -> None:
        name = state["name"]
        if state["file"] is not None:
            state["file"].close()
            state["file"] = None
        elif name is not None and not errors:
            try:
                upload.fields[name] = bytes(state["text"]).decode("utf-8")
            except UnicodeDecodeError:
                fail(400, f"field {name!r} is not UTF-8 text")

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        async for chunk in body:
            parser.write(chunk)
            if errors:
                break
        if not errors:
            parser.finalize()
    except Exception as exc:
        fail(400, f"malformed multipart body: {exc}")
    finally:
        if state["file"] is not None:
            state["file"].close()
    if errors:
        raise errors[0]
    # Give the audio a suffix from its content (never from the client's filename).
    if "audio" in upload.files:
        upload.files["audio"] = _add_audio_suffix(upload.files["audio"])
    return upload


def _add_audio_suffix(path: Path) -> Path:
    with open(path, "rb") as f:
        suffix = sniff_audio_suffix(f.read(16))
    return path.rename(path.with_suffix(suffix))


# ---------------------------------------------------------------------------------------- fields


def text_field(upload: Upload, name: str, default: str | None = None, max_chars: int = 2000) -> str:
    """A text field (or ``default``); 400 when missing or too long."""
    value = upload.fields.get(name, default)
    if value is None:
        raise UploadError(400, f"missing field {name!r}")
    if len(value) > max_chars:
        raise UploadError(413, f"field {name!r} is longer than {max_chars} characters")
    return value


def int_field(upload: Upload, name: str, default: int, lo: int, hi: int) -> int:
    """An integer field in ``[lo, hi]``."""
    raw = upload.fields.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise UploadError(400, f"field {name!r} must be an integer, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise UploadError(400, f"field {name!r} must be between {lo} and {hi}, got {value}")
    return value


def bool_field(upload: Upload, name: str) -> bool:
    """``1/true/yes/on`` -> True; absent or ``0/false/no/off/''`` -> False."""
    raw = upload.fields.get(name, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("", "0", "false", "no", "off"):
        return False
    raise UploadError(400, f"field {name!r} must be true or false, got {raw[:40]!r}")


def size_field(upload: Upload, default: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """``size`` = ``W*H`` (multiples of 16, at most ``max_pixels``), or the server's default."""
    raw = upload.fields.get("size", "").strip()
    if not raw:
        return default
    try:
        width, height = parse_size(raw)
    except UserError as exc:
        raise UploadError(400, str(exc)) from None
    if width * height > max_pixels:
        raise UploadError(
            400, f"size {width}*{height} is larger than this server allows ({max_pixels} pixels, its --size)"
        )
    return width, height


def edits_field(upload: Upload) -> list[tuple[tuple[int, int], str]]:
    """``edits`` = JSON list of ``[first_block, last_block, text]`` (inclusive block ranges)."""
    raw = upload.fields.get("edits", "").strip()
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON and integers past Python's digit limit; RecursionError, nesting.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        message = f"edits must be a JSON list of [first_block, last_block, text]: {reason}"
        raise UploadError(400, message) from None
    if not isinstance(value, list) or len(value) > MAX_EDITS:
        raise UploadError(
            400, f"edits must be a JSON list of at most {MAX_EDITS} [first_block, last_block, text]"
        )
    edits = []
    for i, item in enumerate(value):
        ok = (
            isinstance(item, list)
            and len(item) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in item[:2])
            and isinstance(item[2], str)
            and item[2].strip()
        )
        if not ok or not 0 <= item[0] <= item[1]:
            raise UploadError(
                400,
                f"edits[{i}] must be [first_block, last_block, text] with "
                "0 <= first_block <= last_block and a non-empty text",
            )
        if len(item[2]) > 2000:
            raise UploadError(413, f"edits[{i}] text is longer than 2000 characters")
        edits.append(((item[0], item[1]), item[2]))
    return edits


def check_image(path: Path, max_pixels: int = 40_000_000) -> None:
    """415 unless the file is an image PIL can decode (and not a decompression bomb)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise UploadError(413, f"image is {img.width}x{img.height}; at most {max_pixels} pixels")
            img.load()
    except UploadError:
        raise
    except Exception as exc:
        raise UploadError(415, f"image: not a readable image ({type(exc).__name__})") from None


def check_audio(
    path: Path,
    min_seconds: float,
    max_seconds: float,
    max_decoded_bytes: int = 256 * 2**20,
    downmix: bool = False,
) -> float:
    """415 unless the file is readable audio; 400 if silent or too short, 413 if too long or if its
    decoded samples (rate x channels x seconds x 4 bytes, from the header, before decoding) would
    exceed ``max_decoded_bytes``: a small compressed file can hold gigabytes of samples.

    Returns:
        The duration in seconds.
    """
    from liveact.components.audio import load_audio
    from liveact.video import audio_duration, audio_format

    try:
        seconds = audio_duration(path)
        rate, channels = audio_format(path)
    except Exception:
        raise UploadError(415, "audio: not a readable audio file") from None
    if seconds > max_seconds:
        raise UploadError(
            413, f"audio is {seconds:.1f} s long; this server takes at most {max_seconds:.0f} s"
        )
    decoded = seconds * rate * channels * 4
    if decoded > max_decoded_bytes:
        raise UploadError(
            413,
            f"audio decodes to {decoded / 2**20:.0f} MiB ({channels} channel(s) at {rate} Hz for "
            f"{seconds:.0f} s); this server decodes at most {max_decoded_bytes / 2**20:.0f} MiB "
            "(its --max_decoded_mb): send mono or stereo speech at 16-48 kHz",
        )
    try:
        waveform, rate = load_audio(path, allow_silent=True)
    except (ValueError, RuntimeError) as exc:
        if "non-finite" in str(exc):  # the message names the server's path: say the reason alone
            raise UploadError(400, "audio holds non-finite samples (inf or NaN)") from None
        raise UploadError(415, "audio: not a readable audio file") from None
    seconds = waveform.shape[-1] / rate
    if seconds < min_seconds:
        raise UploadError(400, f"audio is {seconds:.2f} s long; at least {min_seconds:.2f} s is needed")
    if float(waveform.abs().amax()) < 1e-4:
        raise UploadError(400, "audio is silent; the avatar needs speech to lip-sync to")
    if not downmix and waveform.shape[0] > 1 and float(waveform[0].abs().amax()) < 1e-4:
        # The model listens to channel 0 (the authors' choice); refused now, not when the job runs.
        raise UploadError(
            400,
            "audio channel 0 is silent but another channel holds the speech: "
            "set downmix=1 (the mean of the channels), or send mono",
        )
    return seconds
