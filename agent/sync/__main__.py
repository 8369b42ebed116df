"""`python3 -m agent.sync ...` and the self-contained file's entry: `coldclone sync`."""

import sys

from agent.sync.cli import main

if __name__ == "__main__":
    sys.exit(main())
