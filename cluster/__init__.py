"""Running it: the `facs` CLI, job submission, local cluster and cluster configs."""
