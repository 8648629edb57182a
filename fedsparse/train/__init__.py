"""Training loops (plain PyTorch, no Flower)."""

from fedsparse.train.centralized import TrainResult, evaluate_model, train_centralized

__all__ = ["TrainResult", "evaluate_model", "train_centralized"]
