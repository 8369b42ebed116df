"""Widgets drawn with plain characters, so a vt100 serial console shows them too."""
