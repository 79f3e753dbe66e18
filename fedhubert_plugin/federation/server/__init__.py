"""The processes of the server: its ServerApp, the round loop, screening, strategies and the run log."""
