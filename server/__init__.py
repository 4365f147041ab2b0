"""The xfer gRPC server: servicers -> domain logic (registry, transfer, runs) -> storage (catalog, blobs).

Start one with `xfer.server.app.create_server(ServerConfig(...))` or the
`xfer-server` console script; `xfer.server.process.ServerProcess` runs it as
a child process (tests, benchmarks, demos). Importing this package imports
nothing heavy: torch and onnxruntime live only in the validation sandbox.
"""
