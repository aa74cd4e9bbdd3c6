"""How sites and the server exchange protocol messages: in-memory or gRPC with mutual TLS; the PKI."""
