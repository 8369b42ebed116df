"""Real parts for demos, benchmarks and tests: loop devices with real partition
tables and filesystems, and a throwaway OpenSSH sshd with a forced-command key.
Needs root. Never used by the agent on a source server."""
