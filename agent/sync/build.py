"""The self-contained `coldclone sync` file: one zipapp a conversion server serves to its sources.

`coldclone-server sync-file --output PATH` writes it: `#!/usr/bin/env python3`, then a zip of
agent/__init__.py, the modules the sync imports (agent/wire.py, bwlimit.py, errors.py,
devnames.py) and agent/sync/, and a __main__ that runs `sync`. The source runs it as
`python3 coldclone sync --disk ...` with nothing installed. The zip's entries are sorted and dated
1980-01-01, so the same code always gives the same file and the same sha256, which the operator
compares after fetching it.

Standard library only, Python 3.6 syntax (like the modules it packs).
"""

import hashlib
import io
import os
import stat
import zipfile

SHEBANG = b"#!/usr/bin/env python3\n"
# What the sync file holds, relative to the agent package (build.py itself stays out: a source
# never builds the file).
MODULES = ("__init__.py", "wire.py", "bwlimit.py", "errors.py", "devnames.py",
           "sync/__init__.py", "sync/__main__.py", "sync/cli.py", "sync/disk.py", "sync/session.py",
           "sync/ssh.py")
MAIN = '''"""coldclone sync, self-contained: python3 coldclone sync --disk DEV --to URL --identity KEY --hostkey SHA256:..."""
import sys

from agent.sync.cli import main

argv = sys.argv[1:]
if argv[:1] == ["sync"]:
    argv = argv[1:]
elif argv and not argv[0].startswith("-"):
    print("coldclone: this file only syncs: python3 %s sync --disk DEV --to URL --identity KEY "
          "--hostkey SHA256:... (see --help)" % sys.argv[0], file=sys.stderr)
    sys.exit(2)
sys.exit(main(argv))
'''


def agent_dir():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def archive_bytes(root=None):
    """The file's content: the shebang and the zip."""
    root = root or agent_dir()
    buf = io.BytesIO()
    buf.write(SHEBANG)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        entries = [("__main__.py", MAIN.encode())]
        for rel in MODULES:
            with open(os.path.join(root, rel), "rb") as f:
                entries.append(("agent/" + rel, f.read()))
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            z.writestr(info, data)
    return buf.getvalue()


def write_sync_file(output, root=None):
    """Write the sync file to `output` (mode 0755, replaced whole); its sha256 (hex)."""
    data = archive_bytes(root)
    tmp = "%s.tmp-%d" % (output, os.getpid())
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, output)
    return hashlib.sha256(data).hexdigest()
