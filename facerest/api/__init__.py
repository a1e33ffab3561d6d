"""HTTP layer: parses requests, calls the pipeline, serialises answers. Nothing else."""
