"""GenerationService: N candidates per prompt from the unified model, over gRPC."""
