"""Full-ranking recommendation metrics (pure functions)."""

from fedsparse.metrics.ranking import evaluate_embeddings, ndcg_at_k, recall_at_k, top_k_unseen

__all__ = ["evaluate_embeddings", "ndcg_at_k", "recall_at_k", "top_k_unseen"]
