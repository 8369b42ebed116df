"""What a conversion server tells an agent that asks where to capture (READY.load of a probe):
its free space, the captures it receives now, its conversions and its caps."""

from __future__ import annotations

import os
import socket

from ... import protocol as P
from . import captures, convqueue


def server_load(root: str, *, bwlimit: int | None = None, max_conversions: int | None = None) -> P.ServerLoad:
    st = os.statvfs(root)
    queue = convqueue.snapshot(root)
    return P.ServerLoad(free_bytes=st.f_bavail * st.f_frsize, running=captures.running(root),
                        converting=len(queue.running), queued=len(queue.waiting),
                        max_conversions=max_conversions or queue.limit, bwlimit=bwlimit,
                        name=socket.gethostname())
