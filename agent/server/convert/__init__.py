"""The conversion stage on the conversion server: a verified capture -> a KVM virtio guest."""
