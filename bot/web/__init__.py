"""The HTTP listener: its connections, /metrics, the status page, NodeInfo."""
