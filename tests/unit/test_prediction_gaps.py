"""The agent's readiness prediction vs the conversion's fixes: every finding that promises a
conversion is answered by a fix (or by the engine), and no fix was applied that nothing predicted."""

from agent import records
from agent.choices import ConvertEngine, ConvertNetwork
from agent.guestos.readiness import CONVERTED_FINDINGS
from agent.server.convert.model import FINDING_OF_FIX, Fix, FixKind, prediction_gaps


def fix(kind: FixKind) -> Fix:
    return Fix(kind, "/etc/fstab", 2, "/dev/sda1 / ext4", "UUID=x / ext4", "test")


def test_every_fix_kind_names_a_finding_that_promises_a_conversion_or_none():
    assert set(FINDING_OF_FIX) == set(FixKind)
    for kind, fid in FINDING_OF_FIX.items():
        assert fid is None or fid in CONVERTED_FINDINGS, (kind, fid)


def test_agreement_and_both_kinds_of_gap():
    promised = ["fstab-device-names", "bootloader-root-device", "persistent-net-rules"]
    done = [fix(FixKind.FSTAB_DEVICE), fix(FixKind.FSTAB_DEVICE), fix(FixKind.KERNEL_ROOT),
            fix(FixKind.NET_RULE_MAC)]
    assert prediction_gaps(promised, ConvertEngine.FIXUPS, done).agree
    gaps = prediction_gaps(promised + ["initramfs-virtio"], ConvertEngine.FIXUPS, done + [fix(FixKind.NM_MAC)])
    assert gaps.unanswered == ("initramfs-virtio",)          # fixups made no initramfs fix here
    assert [f.kind for f in gaps.unpredicted] == [FixKind.NM_MAC]
    assert prediction_gaps(promised + ["initramfs-virtio"], ConvertEngine.VIRT_V2V, done).agree
    # the fixups engine answers it by its own rebuild
    assert prediction_gaps(promised + ["initramfs-virtio"], ConvertEngine.FIXUPS,
                           done + [fix(FixKind.INITRAMFS_MODULES), fix(FixKind.INITRAMFS_REBUILT)]).agree


def test_a_static_primary_is_answered_by_dhcp_or_by_keep():
    promised = ["primary-nic", "static-ip"]
    renamed = [fix(FixKind.NET_KERNEL_ARG), fix(FixKind.NET_RENAME)]
    # --network dhcp (the default) must switch it: without the fix the promise is broken
    assert prediction_gaps(promised, ConvertEngine.FIXUPS, renamed).unanswered == ("static-ip",)
    assert prediction_gaps(promised, ConvertEngine.FIXUPS, renamed + [fix(FixKind.NET_DHCP)]).agree
    # --network keep keeps it on purpose: answered with no fix
    assert prediction_gaps(promised, ConvertEngine.FIXUPS, renamed, ConvertNetwork.KEEP).agree


def test_fix_round_trips_through_the_manifest_form():
    f = fix(FixKind.KERNEL_RESUME)
    assert records.decode(records.encode(f), Fix, "fix") == f
