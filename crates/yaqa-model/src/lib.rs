//! `yaqa-model`: checkpoints, the transformer forward and backward, calibration and evaluation.
