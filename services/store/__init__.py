"""The store service: ArtifactStoreService and ExecutionStoreService over any backend."""
