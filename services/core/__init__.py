"""Shared domain of both daemons: manifests, key layout, the etcd adapter, topology,
logging, metrics. One module per concept; only ``store`` imports the etcd client."""
