"""Generated protobuf and gRPC code for the `blindmatch.v1` package (see proto/)."""
