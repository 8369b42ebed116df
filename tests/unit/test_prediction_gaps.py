"""The agent's readiness prediction vs the conversion's fixes: every finding that promises a
conversion is answered by a fix (or by the engine), and no fix was applied that nothing predicted."""

from agent import records
from agent.server.convert.model import FINDING_OF_FIX, Fix, FixKind, prediction_gaps

from agent.choices import ConvertEngine
from agent.guestos.readiness import CONVERSION


def fix(kind: FixKind) -> Fix:
    return Fix(kind, "/etc/fstab", 2, "/dev/sda1 / ext4", "UUID=x / ext4", "test")


def test_every_fix_kind_names_a_finding_that_promises_a_conversion_or_none():
    assert set(FINDING_OF_FIX) == set(FixKind)
    for kind, fid in FINDING_OF_FIX.items():
        assert fid is None or fid in CONVERSION, (kind, fid)


def test_agreement_and_both_kinds_of_gap():
    promised = ["fstab-device-names", "bootloader-root-device", "persistent-net-rules"]
    done = [fix(FixKind.FSTAB_DEVICE), fix(FixKind.FSTAB_DEVICE), fix(FixKind.KERNEL_ROOT),
            fix(FixKind.NET_RULE_MAC)]
    assert prediction_gaps(promised, ConvertEngine.FIXUPS, done).agree
    gaps = prediction_gaps(promised + ["initramfs-virtio"], ConvertEngine.FIXUPS, done + [fix(FixKind.NM_MAC)])
    assert gaps.unanswered == ("initramfs-virtio",)          # only virt-v2v rebuilds the initramfs
    assert [f.kind for f in gaps.unpredicted] == [FixKind.NM_MAC]
    assert prediction_gaps(promised + ["initramfs-virtio"], ConvertEngine.VIRT_V2V, done).agree


def test_fix_round_trips_through_the_manifest_form():
    f = fix(FixKind.KERNEL_RESUME)
    assert records.decode(records.encode(f), Fix, "fix") == f
