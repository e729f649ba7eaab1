"""chora registry infrastructure: the GitOps sync and heartbeat daemons."""
