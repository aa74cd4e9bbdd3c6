"""Generated protobuf/gRPC modules (see secure_fedrl/transport/codegen.py). Do not edit."""
