"""Every message type and the external wire codec."""
