"""The demo server: ``python demo.py`` / ``liveact-demo`` (see ``liveact.serve.cli``).

``engine`` runs jobs on a loaded pipeline one at a time, ``stream`` encodes them as a live fragmented
mp4, ``app`` is the HTTP/WebSocket API and ``static/`` the page.
"""
