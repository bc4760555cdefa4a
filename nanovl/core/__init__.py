"""The model's domain, free of Triton, gRPC, FastAPI and the engines: one module per stage of a request."""
