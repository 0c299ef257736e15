"""The one network-reachability probe, shared by everything that may download (models, weights).

:func:`reachable` answers "would a download from this URL get a connection right now?" with a
single TCP connection attempt and a short timeout, so code that finds a model missing offline can
fail within seconds instead of waiting for a library's own retries. It lives in :mod:`data`
because :mod:`data` imports neither :mod:`daclip` nor :mod:`irsde`, while both may import it
(:mod:`data.captioning` for BLIP, :mod:`daclip.pretrained` for open_clip tags). Whether downloads
are disabled altogether (``HF_HUB_OFFLINE`` and the like) is each caller's decision, made before
probing.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

__all__ = ["reachable"]


def reachable(url: str, timeout: float) -> bool:
    """Whether ``url``'s host (or the HTTPS proxy, when ``HTTPS_PROXY`` is set) accepts a TCP connection.

    One connection attempt to the host and port of ``url`` (port 443 for ``https``, 80 otherwise,
    unless the URL names one); with ``HTTPS_PROXY``/``https_proxy`` set, the proxy is probed
    instead, since that is where a download would connect. The attempt runs in a daemon thread
    that is waited for at most ``timeout + 0.5`` seconds, so even a stuck DNS lookup cannot block
    longer. A URL without a host is unreachable.
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    parsed = urlparse(proxy or url)
    host = parsed.hostname
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])
