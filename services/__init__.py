"""dagwire's processes: one subpackage per service (a thin gRPC layer over the core `dagwire`)."""
