"""Download-free metrics for talking-avatar video: lip-sync, silence, identity drift, accessories, jitter.

``python -m liveact.eval <command> --help`` lists the tools.
"""
