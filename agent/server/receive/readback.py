"""The read-back digest of a disk's image, computed while the image is being written.

Every disk's image is hashed again as stored (not from the buffers that were written): a qcow2
read through qemu's block layer (its own NBD connection to the image's qemu-storage-daemon), a
raw file through the page cache. The result must equal the digest the agent sent: that catches a
write that went astray on the conversion server, in qemu's qcow2 layer or below it. Done after the last record, it cost 2 to 4 s on the bench workload (1.9 GB of
data) that the agent waited for, while during the stream the receiver mostly waits for the link.
So a thread follows the writer: it reads back and hashes the bytes below the position the stream
has written, and at END only the tail is left. It reads the image the same way a read-back after
END would (protocol.feed_range; unallocated clusters and holes are zeros), and below the written
position the stream never writes again (records come in disk order): the guarantee is the same,
it is only earlier.
"""

from __future__ import annotations

import threading

from ... import protocol as P

# Read back in steps of at least this much (or up to the disk's end): fewer, larger reads while
# the stream runs, and never more than this left to read when END comes (the estimate counts it).
STEP = P.READBACK_STEP


class Readback:
    """Follows one raw file as it is written; `digest()` at END gives the read-back digest."""

    def __init__(self, reader, path: str, size: int, block_size: int, tree: P.BlockTree | None = None):
        """reader: the image's own reading handle (disk_image: `image.reader()`, closed here);
        path: its name in errors; tree: the bytes below tree.pos already read back from this
        image (a resumed disk's held part, rebuilt from it and checked against its journal)."""
        self.path = path
        self._reader = reader
        self._tree = tree if tree is not None else P.BlockTree(size, block_size)
        self._written = self._tree.pos
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="cc-readback", daemon=True)
        self._thread.start()

    def written(self, pos: int) -> None:
        """The stream has written every byte below pos (block-aligned, or the disk's end)."""
        with self._cond:
            if pos > self._written:
                self._written = pos
                if pos - self._tree.pos >= STEP or pos == self._tree.size:
                    self._cond.notify()

    def _run(self) -> None:
        tree = self._tree
        try:
            # A resumed disk whose every byte was held already (the receiver was killed after the
            # last byte, before the disk was marked complete): nothing to wait for, ever.
            while tree.pos < tree.size:
                with self._cond:
                    while not self._closed and not (self._written - tree.pos >= STEP
                                                    or self._written == tree.size > tree.pos):
                        self._cond.wait()
                    if self._closed:
                        return
                    # one step at a time (block-aligned), so that close() never waits for more
                    target = min(self._written, tree.pos + max(tree.block_size, STEP - STEP % tree.block_size))
                P.feed_range(-1, tree, target, is_file=True, what=self.path, reader=self._reader)
        except BaseException as e:   # handed to digest(), which the receiver's error handling sees
            self._error = e

    def digest(self) -> str:
        """The read-back digest (hex) once everything is written; waits for the tail."""
        self.written(self._tree.size)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._tree.digest().hex()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
