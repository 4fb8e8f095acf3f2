"""The training of ``inik train`` (:mod:`inik.train`, which re-exports the public names):
config, data, checkpoints, validation and the loop."""
