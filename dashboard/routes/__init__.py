"""The dashboard's routers: ``pages`` (HTML) and ``api`` (JSON), both GET-only."""
