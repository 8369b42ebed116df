"""`coldclone-server`: set a conversion server up, tell what it holds, show a wave on a page."""
