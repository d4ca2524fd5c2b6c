"""diffnas-sparsemax: the sparsemax relaxation as a third-party diffnas plugin."""
