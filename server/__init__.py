"""tessera.server: the online store (RocksDB), the registry of feature groups, the gRPC runtime
API, the HTTP control plane and the `tessera` command line."""
