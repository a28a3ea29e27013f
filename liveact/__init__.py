"""LiveAct: real-time, streaming, hour-scale audio-driven talking-human video.

Nothing runs at import time; import the submodules you need (``liveact.model``, ``liveact.sampler``, ...).
"""

__version__ = "0.1.0"
