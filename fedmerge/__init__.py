"""The ``fedmerge`` command and the processes it runs: the CLI, the demo, run reports,
certificates, and the deployment services (the coordinator's SuperLink and dashboard, the
workers' SuperNodes and warm executor, run submission). The federation itself is in
coordinator/ (the server), client/ (the ClientApp) and aggregation/ (the math)."""
