"""The launch plan of a published capture (pure: the manifest and the images in, a LaunchPlan
out): the boot image as the server's root, each data image made a Cinder volume and attached in
the capture's order, a flavor the size of the source server, and the network as the
conversion left the guest.

The commands are `openstack` commands (python-openstackclient) as an operator types them;
what only the operator knows is a shell variable the plan's script asks for ($FLAVOR,
$NETWORK, $FIXED_IP), and what a command makes (a volume's id) goes into one.

The plan of a warm capture is a test launch (images.Launch): it says so first, and the volumes,
the port and the server it makes are named with -test-sync<N>, beside the images.
"""

from __future__ import annotations

import math
import re

from ...manifest import (AddressPolicy, FlavorSuggestion, ImageRole, LaunchPlan, NetworkPolicy, PlanStep,
                         PublishedImage, SourceMachine)
from ...guestos.report import ReadinessReport
from ..convert.model import Conversion, FixKind, Outcome
from ..receive.manifest import CaptureDirectory
from .images import Launch

MIB, GIB = 1 << 20, 1 << 30
# Without the source's machine in the manifest (an agent from before it was recorded).
DEFAULT_VCPUS, DEFAULT_RAM_MIB = 2, 4096
MAC_FIXES = (FixKind.NET_RULE_MAC, FixKind.IFCFG_MAC, FixKind.NM_MAC, FixKind.INTERFACES_MAC,
             FixKind.NETPLAN_MAC, FixKind.NETWORKD_MAC)


def flavor_suggestion(cap: CaptureDirectory, boot: PublishedImage) -> FlavorSuggestion:
    """As many vCPUs and as much RAM as the source server had (RAM rounded up to whole GiB, as
    flavors come), and a root disk as large as its boot disk."""
    disk_gib = max(1, math.ceil(boot.virtual_size / GIB))
    machine = SourceMachine.of(cap.manifest)
    if machine is None:
        return FlavorSuggestion(DEFAULT_VCPUS, DEFAULT_RAM_MIB, disk_gib,
                                "the manifest records no CPUs or memory of the source (captured by an "
                                f"older agent): {DEFAULT_VCPUS} vCPUs and {DEFAULT_RAM_MIB} MiB, check them")
    ram = math.ceil(machine.memory_bytes / GIB) * 1024
    return FlavorSuggestion(machine.cpus, ram, disk_gib,
                            f"the source server: {machine.cpus} CPUs, {machine.memory_bytes // MIB} MiB of "
                            f"memory; its boot disk {boot.disk}, {boot.virtual_size} bytes")


def static_configs(ready: ReadinessReport) -> tuple[str, ...]:
    """The guest files that set the primary interface's fixed address (the static-ip finding):
    from the report's network model; a report from before it had one names them as evidence."""
    if not any(f.id == "static-ip" for f in ready.findings):
        return ()
    prim = ready.network.primary_iface if ready.network is not None else None
    if prim is not None:
        return (prim.path,)
    return tuple(e for f in ready.findings if f.id == "static-ip" for e in f.evidence)


def network_policy(cap: CaptureDirectory) -> NetworkPolicy:
    """What the conversion did to the guest's network configuration (its fixes and its
    `network` mapping: the --network policy, the primary's name and addresses on the instance)
    and what the readiness report says it still does (old MACs left, fixed addresses)."""
    ready = cap.readiness
    if ready is None or not ready.os_name:
        return NetworkPolicy(AddressPolicy.UNKNOWN, summary="no source OS was inspected: nothing is known "
                                                            "of its network configuration")
    removed: tuple[str, ...] = ()
    conv = cap.section("conversion", Conversion)
    mapping = None
    if conv is not None and conv.result is Outcome.CONVERTED:
        removed = tuple(sorted({f.path for f in conv.fixes if f.kind in MAC_FIXES}))
        if conv.network is not None and conv.network.primary:
            mapping = conv.network
    left = tuple(sorted({b.path for b in ready.mac_bindings} - set(removed)))
    static = static_configs(ready)
    said = []
    if removed:
        said.append(f"the conversion removed the old NICs' MAC bindings ({', '.join(removed)}): the guest "
                    f"takes the cloud's virtio NIC as its own")
    if left:
        said.append(f"still bound to the old NICs' MACs: {', '.join(left)} (run coldclone-convert, or the "
                    f"guest finds no interface for that configuration)")
    kw: dict = {}
    if mapping is not None:
        kw = dict(conversion_policy=mapping.policy.value, interface=mapping.name)
        said.append(f"the conversion (--network {mapping.policy.value}) gave the primary interface "
                    f"{mapping.primary} ({mapping.style}) to the first virtio NIC as {mapping.name}, {mapping.method}"
                    + (f"; disabled: {', '.join(mapping.disabled)}" if mapping.disabled else ""))
        if mapping.problems:
            said.append("the conversion could not map all of it: " + "; ".join(mapping.problems))
        if mapping.method == "dhcp":
            static = ()     # switched to DHCP (or DHCP already): the old static files no longer apply
        elif mapping.addresses:
            kw["fixed_addresses"] = tuple(mapping.addresses)
            static = static or (f"{mapping.name}: {', '.join(mapping.addresses)}",)
    if static:
        said.append(f"the guest sets its own address ({', '.join(kw.get('fixed_addresses') or static)}): its "
                    f"port must carry that address ($FIXED_IP), or switch the guest to DHCP")
        return NetworkPolicy(AddressPolicy.FIXED, removed, left, static, "; ".join(said), **kw)
    said.append("the guest asks DHCP for its address: any port of the network will do")
    return NetworkPolicy(AddressPolicy.DHCP, removed, left, (), "; ".join(said), **kw)


def _var(disk: str) -> str:
    return "VOL_" + re.sub(r"[^A-Za-z0-9]", "_", disk).upper()


def launch_plan(cap: CaptureDirectory, images: list[PublishedImage]) -> LaunchPlan:
    launch = Launch.of(cap.manifest)
    capture_id = cap.manifest.capture_id
    named = capture_id + launch.suffix      # what the plan makes: a test launch's say so
    boot = next(i for i in images if i.role is ImageRole.BOOT)
    data = sorted((i for i in images if i.role is ImageRole.DATA), key=lambda i: i.position)
    flavor = flavor_suggestion(cap, boot)
    net = network_policy(cap)
    variables = {"FLAVOR": f"a flavor of at least {flavor.vcpus} vCPUs, {flavor.ram_mib} MiB RAM and a "
                           f"{flavor.disk_gib} GiB root disk ({flavor.basis})",
                 "NETWORK": "the network (name or id) the server joins"}
    steps = [PlanStep(("openstack", "flavor", "create", "--vcpus", str(flavor.vcpus), "--ram", str(flavor.ram_mib),
                       "--disk", str(flavor.disk_gib), "--private", f"coldclone-{capture_id}"),
                      why="a flavor of the source's size, for an admin to make (else choose an existing "
                          "one of at least this size as $FLAVOR)", optional=True)]
    for img in data:
        var, gib = _var(img.disk), max(1, math.ceil(img.virtual_size / GIB))
        steps.append(PlanStep(("openstack", "volume", "create", "--image", img.image_id, "--size", str(gib),
                               "-f", "value", "-c", "id", f"{capture_id}-{img.disk}{launch.suffix}"), sets=var,
                              why=f"data disk {img.disk} (position {img.position}) as a Cinder volume of its image"))
        steps.append(PlanStep(("openstack", "volume", "show", "-f", "value", "-c", "status", f"${var}"),
                              until="available", why=f"wait until the volume of {img.disk} is written"))
    nic: tuple[str, ...] = ("--network", "$NETWORK")
    if net.addresses is AddressPolicy.FIXED:
        variables["FIXED_IP"] = (f"the address the source server set itself ({', '.join(net.fixed_addresses)}: "
                                 f"{', '.join(net.static_configs)})" if net.fixed_addresses else
                                 f"the address the source server set itself ({', '.join(net.static_configs)})")
        steps.append(PlanStep(("openstack", "port", "create", "--network", "$NETWORK", "--fixed-ip",
                               "ip-address=$FIXED_IP", "-f", "value", "-c", "id", f"{named}-port"),
                              sets="PORT", why="a port with the source's own address"))
        nic = ("--port", "$PORT")
    attach = tuple(w for img in data for w in (
        "--block-device", f"uuid=${_var(img.disk)},source_type=volume,destination_type=volume,"
                          f"boot_index=-1,delete_on_termination=false"))
    steps.append(PlanStep(("openstack", "server", "create", "--flavor", "$FLAVOR", "--image", boot.image_id,
                           *nic, *attach, "--wait", named),
                          why=("a TEST server of the warm copy, " if launch.test else "")
                              + f"the server: root from the boot image ({boot.disk}), then "
                              + (", ".join(f"{i.disk}" for i in data) or "no data disks")
                              + " attached in the capture's order"))
    return LaunchPlan(flavor=flavor, network=net, steps=tuple(steps), variables=variables,
                      test_sync=launch.sync if launch.test else None)
