"""The training loop and what it needs: feature taps, adapters, checkpoints."""
