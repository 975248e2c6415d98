"""The control plane's shared parts: the link to the coordinator (heartbeats), owned child
processes, the torchrun environment and the machine-limit checks."""
