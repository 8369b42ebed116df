"""What a guest OS holds, read from its files as pure text -> typed models (fstab, network, boot): shared by the agent's inspection and the server's conversion."""
