"""Is cloud-init installed in the source OS? Without it the cloud cannot set
the hostname, SSH keys or grow the root filesystem."""

from __future__ import annotations

from . import files

EVIDENCE = (
    "usr/bin/cloud-init",
    "etc/cloud/cloud.cfg",
    "var/lib/dpkg/info/cloud-init.list",
    "usr/lib/systemd/system/cloud-init.service",
    "lib/systemd/system/cloud-init.service",
    "etc/init.d/cloud-init",
    "etc/rc.d/init.d/cloud-init",
)


def detect(root: str) -> tuple[bool, list[str]]:
    found = ["/" + rel for rel in EVIDENCE if files.exists(root, rel)]
    # Python package directory, wherever the distribution's python lives.
    for libdir in ("usr/lib", "usr/lib64"):
        for py in files.listdir(root, libdir):
            if py.startswith("python"):
                for sub in ("site-packages", "dist-packages"):
                    if files.exists(root, f"{libdir}/{py}/{sub}/cloudinit"):
                        found.append(f"/{libdir}/{py}/{sub}/cloudinit")
    for py in files.listdir(root, "usr/lib/python3/dist-packages"):
        if py == "cloudinit":
            found.append("/usr/lib/python3/dist-packages/cloudinit")
    # /etc/cloud alone may be a leftover of a removed package: the program must be there.
    installed = any(not f.startswith("/etc/cloud") for f in found)
    return installed, found
