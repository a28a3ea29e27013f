"""LiveActPipeline: (image, audio, prompt, edits) -> a stream of RGB frame blocks.

    pipe = LiveActPipeline.from_pretrained(ckpt_dir, wav2vec_dir, device="cuda", dtype=torch.bfloat16)
    clip = pipe.prepare(Request(image="face.png", audio="speech.wav", prompt="A person talks."))
    for frames in pipe.stream(clip, seed=42):      # [1, 3, F, H, W] in [-1, 1], whole blocks
        writer.write(frames)                       # ProgressiveVideoWriter trims to the audio

``stream()`` yields whole blocks (21 frames, then 32 at the default layout), enough of them to cover
the whole audio, so the last block usually runs past the end of the speech: keep the first
``clip.num_frames`` frames (``liveact.video.ProgressiveVideoWriter`` does this when given the audio).

The order of work per clip is the reference's (REFERENCE.md §6.2): T5 of the prompt and edits,
image cover-resize + centre crop, CLIP, audio (tempo 25/fps, 16 kHz, x3, wav2vec2), the mask and
VAE latent ``y``, then the streaming sampler and a streaming VAE decode.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from liveact.components.audio import StreamingAudio, load_audio, prepare_speech, select_channel
from liveact.components.logmel import LogMelEncoder, LogMelStream
from liveact.config import MemoryConfig, SamplerConfig, settings_from_dict
from liveact.loading import AssetError, load_transformer, read_dit_config, resolve_assets
from liveact.model import LiveActTransformer
from liveact.sampler import Conditions, NeighborForcingSampler, audio_window, block_span

if TYPE_CHECKING:
    from liveact.components.audio import Wav2VecEncoder
    from liveact.components.encoders import CLIPImageEncoder, T5TextEncoder
    from liveact.components.vae import WanVAE

logger = logging.getLogger(__name__)


@dataclass
class Request:
    """One clip to generate (one entry of the input JSON).

    ``edits``: ``[((first_block, last_block), prompt), ...]``, inclusive, first match wins.
    """

    image: str | Path | Image.Image
    audio: str | Path
    prompt: str
    edits: list[tuple[tuple[int, int], str]] = field(default_factory=list)


@dataclass
class PreparedClip:
    """A request turned into sampler conditions, with the clip's length.

    ``duration``: seconds of audio; ``num_frames``: video frames that cover it, ``ceil(duration * fps)``
    (keep this many of the streamed frames); ``num_blocks``: blocks to generate for them (the last
    one usually runs past the audio); ``timings``: seconds spent in each preparation stage.
    """

    request: Request
    conditions: Conditions
    duration: float
    num_blocks: int
    num_frames: int
    timings: dict[str, float] = field(default_factory=dict)


# The preparation stages, in order, as passed to ``prepare(progress=...)``.
PREPARE_STAGES = ("text", "image", "audio", "conditioning")
PREPARE_STAGE_TEXT = {
    "text": "encoding the prompts (text encoder)",
    "image": "encoding the portrait (image encoder)",
    "audio": "extracting audio features (wav2vec2)",
    "conditioning": "encoding the conditioning video (VAE)",
}


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a ``torch.device``, with a clear error when this machine cannot provide it.

    Raises:
        ValueError: not a device name, or a CUDA device on a machine or torch build without CUDA.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not a torch device name: use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    name = repr(str(device))
    if device.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(
                f"device={name}, but this PyTorch build ({torch.__version__}) has no CUDA "
                "support: use device='cpu', or install the CUDA build of torch"
            )
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={name}, but no CUDA GPU is visible to PyTorch (check the driver and "
                "CUDA_VISIBLE_DEVICES), or use device='cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name}, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with 16- and 32-bit grey images scaled to 8 bits first (PIL's convert clips them: a
    16-bit PNG would come out white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() <= 65535 else float(values.max())
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_image(image: str | Path | Image.Image) -> Image.Image:
    """An RGB ``PIL.Image`` from a path or image, with a clear error for unreadable files."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    path = Path(image)
    if path.is_dir():
        raise ValueError(f"image {path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except Exception as exc:
        raise ValueError(f"unreadable image {path}: {exc}") from exc


def cover_crop(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """Scale to cover ``width x height`` (bicubic), centre-crop, map to [-1, 1].

    Returns:
        ``[1, 3, 1, height, width]`` float32. The aspect ratio is kept; the excess is cropped.
    """
    w0, h0 = image.size
    scale = max(width / w0, height / h0)
    resized = image.resize((max(width, round(w0 * scale)), max(height, round(h0 * scale))), Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    crop = np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.float32) / 255.0
    return (torch.from_numpy(crop).permute(2, 0, 1) * 2 - 1)[:, None][None]


def first_frame_mask(latent_frames: int, temporal_stride: int, lh: int, lw: int) -> torch.Tensor:
    """I2V mask ``[1, stride, F, lh, lw]``: all ``stride`` channels 1 on latent frame 0, else 0.

    The reference builds it at video rate (frame 0 = 1) and folds ``stride`` video frames into each
    latent's channels, repeating frame 0 so that latent 0 is fully marked.
    """
    mask = torch.zeros(1, temporal_stride, latent_frames, lh, lw)
    mask[:, :, 0] = 1
    return mask


class LiveActPipeline:
    """All models of LiveAct and the glue between them.

    Args:
        transformer, vae, text_encoder, image_encoder, audio_encoder: the loaded models.
        size: ``(width, height)`` of the output, multiples of 16.
        fps: output frame rate (also sets the audio tempo 25/fps).
        audio_cfg, mean_memory, fp8_kv_cache, offload_cache: sampler options (see
            ``NeighborForcingSampler``).
        edit_cfg: edit guidance scale (``SamplerConfig.edit_cfg``); None keeps the schedule's.
        vae_stitch: ``continuous`` (one causal decode across blocks) or ``reference`` (the authors'
            overlap-and-crop decode).
        stream_audio: re-encode a short audio slice per block (``--steam_audio``) instead of the
            whole file once.
        downmix: condition on the mean of the audio channels instead of channel 0 (the reference).
        park_text_encoder: keep the text encoder in host memory and bring it to the transformer's
            device only while it encodes prompts (``--offload_t5``: 10.6 GB of umT5 off the GPU).

    Attributes:
        trace: None, or a callable ``trace(name, tensor)`` that sees the intermediates of each clip as
            they are made, for debugging and parity tests: ``t5_input_ids`` / ``t5_attention_mask``
            ``[P, text_len]`` and one ``t5_context`` ``[L_i, text_dim]`` per prompt (main, then edits),
            ``cond_image`` ``[1, 3, 1, H, W]``, ``clip_fea`` ``[1, 257, C]``, ``tempo_output`` ``[N']``,
            ``speech`` ``[M]`` (16 kHz) and ``audio_embedding`` ``[S, L, C]`` (once for the whole file,
            or per encoded window with ``stream_audio``, each after ``stream_window`` ``[2]`` and
            ``stream_slice`` ``[2]``: see ``StreamingAudio``), ``y`` ``[1, 4 + z, F, lh, lw]`` and one
            ``latent`` ``[z, T, lh, lw]`` per block, before decoding.
    """

    def __init__(
        self,
        transformer: LiveActTransformer,
        vae: WanVAE,
        text_encoder: T5TextEncoder,
        image_encoder: CLIPImageEncoder,
        audio_encoder: Wav2VecEncoder,
        *,
        size: tuple[int, int] = (480, 832),
        fps: float = 24,
        audio_cfg: float = 1.0,
        mean_memory: bool = False,
        fp8_kv_cache: bool = False,
        offload_cache: bool = False,
        vae_stitch: str = "continuous",
        stream_audio: bool = False,
        downmix: bool = False,
        memory: MemoryConfig | None = None,
        schedule: SamplerConfig | None = None,
        park_text_encoder: bool = False,
        edit_cfg: float | None = None,
    ) -> None:
        stride = (schedule or SamplerConfig()).vae_stride
        self.size_unit = stride[1] * transformer.config.patch_size[1]
        self.transformer, self.vae = transformer, vae
        self.text_encoder, self.image_encoder, self.audio_encoder = text_encoder, image_encoder, audio_encoder
        self.set_output(size, fps)
        self.vae_stitch, self.stream_audio, self.downmix = vae_stitch, stream_audio, downmix
        self.trace: Callable[[str, torch.Tensor], None] | None = None
        self.park_text_encoder = park_text_encoder
        # What decodes the latent blocks: the autoencoder itself, or a faster one (TAEW2.1 for 14B).
        self.decoder = vae
        if edit_cfg is not None:
            schedule = replace(schedule or SamplerConfig(), edit_cfg=edit_cfg)
        self.sampler = NeighborForcingSampler(
            transformer,
            audio_cfg=audio_cfg,
            mean_memory=mean_memory,
            fp8_kv_cache=fp8_kv_cache,
            offload_cache=offload_cache,
            memory=memory,
            sampler=schedule,
        )

    @classmethod
    def from_pretrained(
        cls,
        ckpt_dir: str | Path | None = None,
        wav2vec_dir: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        t5_cpu: bool = False,
        sequence_parallel: bool = False,
        fp8_gemm: bool = False,
        block_offload: bool = False,
        tae_path: str | Path | None = None,
        **options: object,
    ) -> LiveActPipeline:
        """Load a checkpoint folder: the embedded LiveAct-Nano when ``ckpt_dir`` is None, a folder that
        names its own components (``components.json``: Nano-style), or the official asset folders
        (see ``liveact.loading.resolve_assets``; ``wav2vec_dir`` is then required).

        ``tae_path``: decode with a tiny autoencoder in the TAEHV layout (e.g. ``taew2_1.pth``) instead
        of the Wan VAE (official folders; the Wan VAE still encodes the conditioning image).

        The DiT is transformed in this order: sequence parallelism (``liveact.speed.parallel``, needs an
        initialised process group), FP8 linears (``liveact.speed.quant``), block offload
        (``liveact.speed.offload``: the DiT stays in host memory and its blocks stream to ``device`` two at
        a time, so the 14B model never sits on the GPU whole).
        ``t5_cpu`` keeps the 11 GB text encoder on the CPU; its output is moved to ``device``.
        ``options`` go to the constructor (size, fps, sampler options ...); a self-contained folder
        supplies its own size, fps and schedule unless they are given. For an official folder, unless
        ``memory`` or ``schedule`` is given there, its ``config.json`` sets them through the optional
        ``"memory"`` / ``"sampler"`` sections of a preset file (``liveact.config.Preset``), else the
        defaults apply.

        Raises:
            ValueError: ``device`` is not available here (checked before anything is loaded).
            AssetError: a missing, unreadable or mismatched asset file (named in the message).
        """
        from liveact.components.nano import (
            default_model_dir,
            load_components,
            model_defaults,
            read_components,
        )

        device = check_device(device)
        folder = default_model_dir() if ckpt_dir is None else Path(ckpt_dir)
        if read_components(folder) is not None:
            if wav2vec_dir is not None:
                logger.warning(
                    "%s brings its own audio encoder; wav2vec_dir %s is not used", folder, wav2vec_dir
                )
            if tae_path is not None:
                raise ValueError(
                    f"{folder} decodes with its own autoencoder; tae_path is for the official folders"
                )
            transformer = load_transformer(folder, dtype=dtype, device=device)
            parts = load_components(folder, device=device, dtype=dtype)
            defaults = model_defaults(folder)
            options = {
                "size": defaults.get("size", (128, 128)),
                "fps": defaults.get("fps", 25),
                "schedule": parts.pop("schedule"),
                **{k: v for k, v in options.items() if v is not None},
            }
            return cls(
                transformer,
                parts["vae"],
                parts["text_encoder"],
                parts["image_encoder"],
                parts["audio_encoder"],
                **options,
            )
        if wav2vec_dir is None:
            raise AssetError(
                f"{folder} is an official LiveAct checkpoint folder: it also needs wav2vec_dir, "
                "the wav2vec2 folder (chinese-wav2vec2-base)",
                argument="wav2vec_dir",
            )
        # The official components import transformers' CLIP/umT5/wav2vec2 and diffusers (seconds):
        # only a run with the official weights pays for them.
        from liveact.components.audio import Wav2VecEncoder
        from liveact.components.encoders import CLIPImageEncoder, T5TextEncoder
        from liveact.components.vae import WanVAE

        paths = resolve_assets(folder, wav2vec_dir)
        try:
            memory, schedule = settings_from_dict(read_dit_config(paths.dit), str(paths.dit / "config.json"))
        except ValueError as exc:
            raise AssetError(str(exc), argument="ckpt_dir") from None
        for key, value in (("memory", memory), ("schedule", schedule)):
            if options.get(key) is None:
                options[key] = value
        transformer = load_transformer(paths.dit, dtype=dtype, device="cpu" if block_offload else device)
        on_gpu = torch.device(device).type == "cuda"
        if sequence_parallel:
            from liveact.speed.parallel import parallelize

            parallelize(transformer)
        if fp8_gemm:
            from liveact.speed.quant import convert_linears_to_fp8

            # Host-resident weights (block offload) are quantised on the GPU one layer at a time.
            convert_linears_to_fp8(
                transformer, run_device=device, quantize_on=device if block_offload and on_gpu else None
            )
        if block_offload:
            from liveact.speed.offload import enable_block_offload

            enable_block_offload(transformer, device)
        # Probed once here for this device and dtype (LIVEACT_ATTENTION names a preference).
        transformer.set_attention_backend()
        vae = WanVAE.from_pth(paths.vae, device=device, dtype=dtype)
        if on_gpu:
            vae.to_channels_last()
        parked = bool(options.get("park_text_encoder"))
        text = T5TextEncoder.from_pth(
            paths.t5,
            paths.t5_tokenizer,
            device="cpu" if t5_cpu or parked else device,
            dtype=dtype,
            text_len=transformer.config.text_len,
        )
        image = CLIPImageEncoder.from_pth(paths.clip, device=device, dtype=dtype)
        audio = Wav2VecEncoder.from_pretrained(paths.wav2vec, device=device, dtype=dtype)
        decoder = None
        if tae_path is not None:
            from liveact.components.tae import TinyAutoencoder

            decoder = TinyAutoencoder.from_file(tae_path, device=device, dtype=dtype)
        pipe = cls(
            transformer, vae, text, image, audio, **{k: v for k, v in options.items() if v is not None}
        )
        pipe.decoder = decoder or vae
        return pipe

    def check_output(self, size: tuple[int, int], fps: float) -> None:
        """Raise ``ValueError`` unless ``size`` (width, height) and ``fps`` are ones this model can make:
        positive multiples of :attr:`size_unit` (latent stride x patch) and a positive frame rate."""
        width, height = size
        unit = self.size_unit
        if width % unit or height % unit or width <= 0 or height <= 0:
            raise ValueError(f"size {width}*{height}: width and height must be positive multiples of {unit}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")

    def set_output(self, size: tuple[int, int], fps: float) -> None:
        """Make the next clips ``size`` (width, height) at ``fps`` (checked by :meth:`check_output`)."""
        self.check_output(size, fps)
        self.size, self.fps = (int(size[0]), int(size[1])), float(fps)

    @property
    def device(self) -> torch.device:
        """Where the transformer runs."""
        return self.transformer.device

    @property
    def temporal_stride(self) -> int:
        """Video frames per latent frame (after the first)."""
        return self.sampler.config.vae_stride[0]

    @property
    def seconds_per_block(self) -> float:
        """Video seconds of one later block."""
        return self.sampler.memory_config.block_frames * self.temporal_stride / self.fps

    def num_frames_for(self, duration: float) -> int:
        """Video frames that cover ``duration`` seconds of audio: ``ceil(duration * fps)``, at least 1."""
        # The epsilon keeps float noise (4.0 s * 24 fps = 96.00000001) from adding a frame.
        return max(1, math.ceil(duration * self.fps - 1e-6))

    def num_blocks_for(self, duration: float) -> int:
        """Blocks whose frames cover all ``duration`` seconds of audio.

        The first block gives ``frames_of_block(0)`` frames (21 at the default layout), every later
        one ``frames_of_block(1)`` (32). The reference's ``int(duration / seconds_per_block) + 1``
        ignores the shorter first block, so it can stop before the end of the speech (5.2 s at 24 fps:
        117 frames for 125); this count never does, and the blocks both generate are the same.
        """
        first, later = self.frames_of_block(0), self.frames_of_block(1)
        return 1 + max(0, math.ceil((self.num_frames_for(duration) - first) / later))

    # ----------------------------------------------------------------------------------------

    def _trace(self, name: str, tensor: torch.Tensor) -> None:
        if self.trace is not None:
            self.trace(name, tensor)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> list[torch.Tensor]:
        """Text contexts ``[L_i, text_dim]`` on the transformer's device (umT5, or Nano's MiniLM)."""
        if not hasattr(self.text_encoder, "encode_ids"):  # Nano's MiniLM: one call, no token ids to trace
            contexts = [t.to(self.device, self.transformer.dtype) for t in self.text_encoder.encode(prompts)]
            for context in contexts:
                self._trace("text_context", context)
            return contexts
        input_ids, attention_mask = self.text_encoder.tokenize(prompts)
        self._trace("t5_input_ids", input_ids)
        self._trace("t5_attention_mask", attention_mask)
        if self.park_text_encoder:
            # The KV memory of the last clip makes room for the encoder; the next stream reallocates it.
            self.sampler.release_memories()
            self.text_encoder.model.to(self.device)
        try:
            contexts = [
                t.to(self.device, self.transformer.dtype)
                for t in self.text_encoder.encode_ids(input_ids, attention_mask)
            ]
        finally:
            if self.park_text_encoder:
                self.text_encoder.model.to("cpu")
        for context in contexts:
            self._trace("t5_context", context)
        return contexts

    @torch.no_grad()
    def conditioning_latent(self, image: torch.Tensor) -> torch.Tensor:
        """``y`` ``[1, stride + z, F, lh, lw]``: first-frame mask + VAE latent of (image, zeros ...)."""
        mem = self.sampler.memory_config
        latent_frames = mem.first_block_frames + mem.block_frames
        video_frames = 1 + (latent_frames - 1) * self.temporal_stride
        video = torch.zeros(
            1, 3, video_frames, *image.shape[-2:], dtype=self.vae.dtype, device=self.vae.device
        )
        video[:, :, :1] = image.to(video)
        z = self.vae.encode(video)[None].float()
        mask = first_frame_mask(latent_frames, self.temporal_stride, *z.shape[-2:]).to(z)
        return torch.cat([mask, z], dim=1)

    @torch.no_grad()
    def prepare(self, request: Request, progress: Callable[[str], None] | None = None) -> PreparedClip:
        """Encode everything a clip is conditioned on; checks inputs before any heavy work.

        Args:
            request: the image, audio, prompt and edits.
            progress: called with each stage's name (``PREPARE_STAGES``: text, image, audio,
                conditioning) as it starts; by default each stage is logged. On a CPU the last one
                (the VAE encode) can take minutes.
        Raises:
            FileNotFoundError / ValueError: a missing, unreadable, empty or too short input.
        """
        report = progress or (lambda stage: logger.info("preparing: %s", PREPARE_STAGE_TEXT[stage]))
        waveform, sample_rate = load_audio(request.audio)
        mono = select_channel(waveform, self.downmix)  # also refuses a silent channel 0 up front
        duration = waveform.shape[-1] / sample_rate
        min_duration = 1.0 / self.fps
        if duration < min_duration:
            raise ValueError(
                f"audio {request.audio} is {duration:.3f} s long; at least one frame "
                f"({min_duration:.3f} s) is needed"
            )
        image = cover_crop(load_image(request.image), *self.size)
        self._trace("cond_image", image)
        num_blocks = self.num_blocks_for(duration)
        self._warn_unused_edits(request, num_blocks)
        timings: dict[str, float] = {}

        with _stage("text", self.device, timings, report):
            prompts = [request.prompt] + [text for _, text in request.edits]
            texts = self.encode_text(prompts)
        with _stage("image", self.device, timings, report):
            clip = self.image_encoder.encode(image.to(self.image_encoder.device)).to(self.device)
            self._trace("clip_fea", clip)
        with _stage("audio", self.device, timings, report):
            embedding, source = self._audio_conditioning(waveform, mono, sample_rate, num_blocks)
        with _stage("conditioning", self.device, timings, report):
            y = self.conditioning_latent(image).to(self.device)
            self._trace("y", y)
        edits = [(rng, t) for (rng, _), t in zip(request.edits, texts[1:])]
        cond = Conditions(text=texts[0], clip=clip, y=y, audio=embedding, edits=edits, audio_source=source)
        return PreparedClip(request, cond, duration, num_blocks, self.num_frames_for(duration), timings)

    def _audio_conditioning(
        self, waveform: torch.Tensor, mono: torch.Tensor, sample_rate: int, num_blocks: int
    ) -> tuple[torch.Tensor, Callable[[int, int], torch.Tensor] | None]:
        """Audio rows ``[S, L, C]`` (one per video frame) and, when streaming, the per-block source."""
        source = None
        if isinstance(self.audio_encoder, LogMelEncoder):
            # Nano: log-mel rows computed at the video fps (no tempo change); a slice equals the whole.
            rows = LogMelStream.from_waveform(
                self.audio_encoder,
                waveform[:1] if not self.downmix else waveform.mean(0, keepdim=True),
                sample_rate,
                self.fps,
                self.transformer.config.audio_window,
            )
            if self.stream_audio:
                source = lambda start, end: rows.embedding(start, end).to(self.device)  # noqa: E731
            # Rows for every frame the blocks cover (and the window past the last one): frames after
            # the speech hear silence, exactly as the per-block slices do, not a repeated last row.
            covered = self.frames_of_block(0) + (num_blocks - 1) * self.frames_of_block(1)
            total = max(
                self.audio_encoder.num_rows(waveform.shape[-1], sample_rate, self.fps),
                covered + self.transformer.config.audio_window // 2,
            )
            embedding = rows.encoder.rows(rows.speech, self.fps, 0, total).to(self.device)
            self._trace("audio_embedding", embedding)
        elif self.stream_audio:
            # Encode per block on short slices only: an hour of audio is never encoded at once. Like
            # the reference, the slices come from the mono signal (it slices `audio_ori[:1]`).
            streaming = StreamingAudio(
                self.audio_encoder,
                mono,
                sample_rate,
                self.fps,
                self.transformer.config.audio_window,
                trace=self._trace,
            )
            source = lambda start, end: streaming.embedding(start, end).to(self.device)  # noqa: E731
            memory = self.sampler.memory_config
            embedding = source(
                *audio_window(block_span(0, memory, self.temporal_stride), memory, self.temporal_stride)
            )
        else:
            # All channels are stretched together, then channel 0 is kept (the reference's order).
            speech = prepare_speech(
                waveform,
                sample_rate,
                self.fps,
                self.audio_encoder.sample_rate,
                audio_fps=self.audio_encoder.audio_fps,
                downmix=self.downmix,
                trace=self._trace,
            )
            embedding = self.audio_encoder.encode(speech).to(self.device)
            self._trace("audio_embedding", embedding)
        return embedding, source

    def _warn_unused_edits(self, request: Request, num_blocks: int) -> None:
        """Say when an edit range lies (partly) past the clip's last block: it would silently never apply."""
        last = num_blocks - 1
        for (first, end), text in request.edits:
            if first > last:
                logger.warning(
                    "edit [%d, %d] (%r) starts after the last block (%d) of this %d-block clip: "
                    "it never applies",
                    first,
                    end,
                    text,
                    last,
                    num_blocks,
                )
            elif end > last:
                logger.warning(
                    "edit [%d, %d] (%r) runs past the last block (%d) of this %d-block clip: "
                    "it applies to blocks %d..%d only",
                    first,
                    end,
                    text,
                    last,
                    num_blocks,
                    first,
                    last,
                )

    def stream(
        self,
        clip: PreparedClip | Request,
        seed: int = 42,
        max_blocks: int | None = None,
        generator: torch.Generator | None = None,
        decode: bool = True,
        decode_ahead: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Generate and decode block by block.

        Args:
            decode: False yields the latent blocks undecoded (sequence-parallel ranks other than
                the main one only take part in the transformer's collectives).
            decode_ahead: decode block ``k`` on a worker thread while the transformer makes block
                ``k + 1`` (same frames; each block arrives one block later). On a CPU the two then
                use different cores (give torch half of them: ``torch.set_num_threads``); on a GPU
                it gains nothing.

        Yields:
            ``[1, 3, F, H, W]`` float in [-1, 1]: ``F = 1 + stride (T0 - 1)`` frames for the first
            block, ``stride * T`` after (21 then 32 with the default layout at any fps); or the
            latent ``[C, T, lh, lw]`` when ``decode`` is False. Whole blocks only: together they
            cover the audio and usually run past it, so keep the first ``clip.num_frames`` frames
            (``ProgressiveVideoWriter`` given the audio file does this).
        """
        if isinstance(clip, Request):
            clip = self.prepare(clip)
        blocks = clip.num_blocks if max_blocks is None else min(clip.num_blocks, max_blocks)
        generator = generator or torch.Generator().manual_seed(seed)
        decoder = self.decoder.stream_decoder(stitch=self.vae_stitch)
        latents = self.sampler.stream(clip.conditions, blocks, generator=generator)

        def decoded(latent: torch.Tensor) -> torch.Tensor:
            return decoder.decode_block(latent.to(self.decoder.device, self.decoder.dtype)).float()

        if not decode_ahead or not decode:
            for latent in latents:
                self._trace("latent", latent)
                yield decoded(latent) if decode else latent
            return
        from concurrent.futures import ThreadPoolExecutor

        # One worker: blocks are decoded in order (the decoder carries its state across blocks).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="liveact-decode") as pool:
            pending = None
            for latent in latents:
                self._trace("latent", latent)
                job = pool.submit(decoded, latent)
                if pending is not None:
                    yield pending.result()
                pending = job
            if pending is not None:
                yield pending.result()

    def frames_of_block(self, index: int) -> int:
        """Video frames block ``index`` decodes to."""
        return block_span(index, self.sampler.memory_config, self.temporal_stride).video_frames(
            self.temporal_stride
        )


@contextmanager
def _stage(
    name: str, device: torch.device, timings: dict[str, float], report: Callable[[str], None]
) -> Iterator[None]:
    """Report stage ``name`` as it starts and record its seconds in ``timings`` (synchronised on CUDA)."""
    report(name)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = time.perf_counter() - start


__all__ = [
    "PREPARE_STAGES",
    "AssetError",
    "LiveActPipeline",
    "PreparedClip",
    "Request",
    "check_device",
    "cover_crop",
    "first_frame_mask",
    "load_image",
]
