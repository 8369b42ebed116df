"""The source side: the agent on the live ISO (discovery, inspection, capture, transport, the front ends)."""
