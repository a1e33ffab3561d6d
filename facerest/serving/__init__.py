"""How server processes start: uvicorn workers, one group per GPU, Ray Serve, a local child server."""
