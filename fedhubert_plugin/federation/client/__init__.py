"""The processes of a client: its ClientApp, its trainers and the SuperNode's trainer service."""
