"""Many runs: sweep (a grid of configs and the state of its runs) and executors (local workers,
inline, SLURM through submitit in slurm.py)."""
