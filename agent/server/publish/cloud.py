"""What the cloud's Glance offers, read through openstacksdk, and the disk format that follows.

Glance says which disk formats it takes (the `disk_format` enum of its image schema, from its
`[image_format] disk_formats`), which import methods it has (/v2/info/import), and, to a user
its policy lets see them, what its stores are (/v2/info/stores/detail). A Ceph RBD default
store wants raw (Glance and Cinder/Nova then clone copy-on-write instead of converting or
copying the image at every boot); otherwise qcow2, the smallest upload; raw or vmdk when those
are all the cloud takes (a VMware-backed cloud's Glance often takes vmdk only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ...errors import UsageError
from ...choices import DiskFormat

log = logging.getLogger("coldclone.publish")

GLANCE_DIRECT = "glance-direct"


@dataclass(frozen=True)
class CloudOffer:
    import_methods: tuple[str, ...]
    disk_formats: tuple[str, ...] | None     # None: the image schema does not list them
    default_store: str | None                # the default store's type (file, rbd, swift ...)
    store_note: str = ""                     # why the store's type is not known

    @property
    def glance_direct(self) -> bool:
        return GLANCE_DIRECT in self.import_methods


def _stores_detail(conn) -> tuple[str | None, str]:
    """The default store's type from /v2/info/stores/detail (admin-only by Glance's default
    policy; absent where one store is configured the old way)."""
    resp = conn.image.get("/info/stores/detail", raise_exc=False)
    if resp.status_code in (401, 403):
        return None, "this user may not see the cloud's stores (Glance's stores_info_detail policy)"
    if resp.status_code in (404, 410):
        return None, "this Glance has no multi-store configuration to show"
    if resp.status_code != 200:
        return None, f"/v2/info/stores/detail answered HTTP {resp.status_code}"
    return default_store_type(resp.json()), ""


def default_store_type(body: object) -> str | None:
    """The type of the store /v2/info/stores/detail marks default (Glance writes its `default`
    as the string "true")."""
    stores = body.get("stores") if isinstance(body, dict) else None
    for store in stores if isinstance(stores, list) else []:
        if isinstance(store, dict) and str(store.get("default")).lower() == "true":
            kind = store.get("type")
            return kind if isinstance(kind, str) else None
    return None


def read_offer(conn) -> CloudOffer:
    import openstack.exceptions as oe

    methods: tuple[str, ...] = ()
    try:
        value = (conn.image.get_import_info().import_methods or {}).get("value")
    except oe.NotFoundException:        # a Glance from before the interoperable import
        value = None
    if isinstance(value, list):
        methods = tuple(m for m in value if isinstance(m, str))
    try:
        enum = ((conn.image.get_image_schema().properties or {}).get("disk_format") or {}).get("enum")
    except oe.NotFoundException:
        enum = None
    formats = tuple(f for f in enum if isinstance(f, str)) if isinstance(enum, list) else None
    store, note = _stores_detail(conn)
    offer = CloudOffer(methods, formats, store, note)
    log.info("cloud offers: import %s, disk formats %s, default store %s%s", methods or "none",
             formats, store or "unknown", f" ({note})" if note else "")
    return offer


def choose_format(requested: DiskFormat | None, offer: CloudOffer) -> tuple[DiskFormat, str]:
    """The disk format to publish in, and why; refused (UsageError) when the cloud does not
    take the one asked for, or none of ours."""
    allowed = offer.disk_formats
    takes = (lambda f: allowed is None or f.value in allowed)
    if requested is not None:
        if not takes(requested):
            raise UsageError(f"--disk-format {requested.value}: this cloud's Glance does not take it (it "
                             f"takes {', '.join(allowed or ())}); choose one of those")
        return requested, "asked for (--disk-format)"
    if offer.default_store == "rbd" and takes(DiskFormat.RAW):
        return DiskFormat.RAW, "the default store is Ceph RBD: raw images are cloned copy-on-write"
    for fmt in (DiskFormat.QCOW2, DiskFormat.RAW, DiskFormat.VMDK):
        if takes(fmt):
            why = ("the smallest upload, taken by this cloud" if fmt is DiskFormat.QCOW2 else
                   f"this cloud's Glance takes {', '.join(allowed or ())}: not qcow2")
            return fmt, why
    raise UsageError(f"this cloud's Glance takes none of qcow2, raw, vmdk (it takes "
                     f"{', '.join(allowed or ())}); coldclone-publish cannot publish there")
