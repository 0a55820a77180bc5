"""The gRPC API's .proto and the modules grpcio-tools generated from it (kept in sync by a test)."""
