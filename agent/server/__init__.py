"""The conversion-server side: receive, convert, publish and the server commands."""
