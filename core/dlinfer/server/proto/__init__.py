"""Generated protobuf modules of the V2 gRPC protocol (see inference.proto for the command)."""
