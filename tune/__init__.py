"""Sweeps and experiments: folds x hyper-parameters -> trials -> best config; scaling studies."""
