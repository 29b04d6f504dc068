"""Command-line entry points: absl flags here, library calls everywhere else."""
