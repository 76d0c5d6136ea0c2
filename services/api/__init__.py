"""Generated protobuf and gRPC code of the unigap.v1 API (protos/generate.py writes it)."""
