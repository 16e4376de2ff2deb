"""fedmerge's web dashboard: read-only HTML pages and a JSON API over the run store.

Imports only ``coordinator.store`` from the project (never torch or flwr):

    from dashboard.server import serve
    serve("sqlite:////abs/path/fedmerge.db", port=8080)
"""
