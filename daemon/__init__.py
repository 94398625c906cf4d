"""The daemon's life: loopback-only Thespian, the process group, logs, the CLI verbs."""
