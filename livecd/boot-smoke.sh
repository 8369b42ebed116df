#!/bin/sh
# Smoke-boot the built ISO in QEMU: each boot prints COLDCLONE-SMOKE-OK on ttyS0 and powers off.
#   livecd/boot-smoke.sh                 kernel (-kernel/-append), bios (isolinux), uefi (GRUB EFI)
#   livecd/boot-smoke.sh all             + bios-usb, uefi-usb (the ISO as a USB stick)
#   livecd/boot-smoke.sh --print-argv uefi     also print the QEMU command line
# COLDCLONE_VM_ACCEL=kvm|tcg forces the accelerator (default: kvm if it runs a guest, else tcg).
# Serial logs: livecd/build/vm-logs/. In pytest -m vm the same checks ride on the capture boots
# (tests/vm/guest.py assert_boot_path: every boot path once).
exec python3 "$(dirname "$0")/../tests/vm/vmboot.py" "$@"
