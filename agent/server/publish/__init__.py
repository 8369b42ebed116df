"""coldclone-publish: a verified capture into OpenStack Glance (conversion-server side)."""
