"""Ground truth and surrogates that score found architectures."""
