"""The gRPC edge: proto <-> model conversion, status mapping, the shared server foundation."""
