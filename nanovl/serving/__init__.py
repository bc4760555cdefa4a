"""What Triton needs around the engine: tensor names, stage parameters, the generation service, the gRPC
client, the launcher and its supervisor. The Triton adapters in model_repository/ and the frontend use it."""
