"""The xfer gRPC server: servicers -> domain logic (registry, transfer) -> storage (catalog, blobs).

Start one with `server.app.create_server(ServerConfig(...))` or the `xfer-server` console script.
"""
