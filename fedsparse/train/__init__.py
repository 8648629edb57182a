"""Training loops (plain PyTorch, no Flower)."""

from fedsparse.train.centralized import (TrainResult, build_training, evaluate_model,
                                         train_centralized, train_step)

__all__ = ["TrainResult", "build_training", "evaluate_model", "train_centralized", "train_step"]
