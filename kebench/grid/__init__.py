"""Many runs: sweep (a grid of configs and the state of its runs) and executors (local workers,
inline, SLURM through submitit in slurm.py)."""
from kebench import registry

#: The executor extension point: kebench's own, registry.yaml's `executors:`, `kebench.executors` entry
#: points. An executor is a function (entries, *, echo, retry_failed, any of the executor flags it
#: names: workers, gpus, partition, ...) -> exit code (0 all done, 1 a run failed, 3 stopped);
#: text entries, so listing them imports neither torch nor submitit.
EXECUTORS = registry.Extensions("executor", "executors", {
    "local": "kebench.grid.executors:run_local_executor",
    "inline": "kebench.grid.executors:run_inline",
    "slurm": "kebench.grid.executors:run_slurm",
    "submitit-local": "kebench.grid.executors:run_submitit_local",
})
