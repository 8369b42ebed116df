"""`coldclone sync`: warm syncs from a running source server (docs/two-phase.md, "Warm syncs").

This package runs on the source server's own OS, where only python3 >= 3.6 and its standard
library and the OpenSSH client can be assumed. So it imports nothing of coldclone but the wire
(agent.wire), the rate syntax and pacing (agent.bwlimit), the errors and exit codes
(agent.errors) and the disk names (agent.devnames), all of them standard library only and
Python 3.6 syntax (.importlinter holds the rule; tests/unit/test_sync_file.py parses every file
as 3.6). `coldclone-server sync-file` packs these into one file (build.py).

    cli.py      the command line (argparse), exit codes
    disk.py     a source disk's facts and identity (the ISO agent's), reading it at low priority
    ssh.py      the server over `ssh` with its host key pinned (ssh-keyscan + fingerprint)
    session.py  the lookup, the sync session, one disk's records
    build.py    the self-contained file (a zipapp)
"""
