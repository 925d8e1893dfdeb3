"""Real aarch64 agents under qemu-user: an arm64 Debian root file system with the agent's wheels, and a runner."""
