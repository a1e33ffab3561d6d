"""Model tooling that runs outside a request: format conversion."""
