"""Per-user scores on a test split, for paired tests between two models on the same users."""

from __future__ import annotations

import torch


def held_out_ranks(trainer, test_data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """0-based rank of each test row's held-out item among all items, the row's input length
    (0 for a model without item sequences) and its user id, by RecBole's own full-sort scoring.
    Ties count against the item (as a top-k cut may drop it)."""
    ranks, lengths, users = [], [], []
    length_field = trainer.config["ITEM_LIST_LENGTH_FIELD"]
    user_field = trainer.config["USER_ID_FIELD"]
    # every score of a row is needed: the score matrix, not the chunked scorer's top k
    score_matrix = getattr(trainer, "score_matrix_batch_eval", trainer._full_sort_batch_eval)
    trainer.model.eval()
    trainer.tot_item_num = test_data._dataset.item_num  # set by RecBole's evaluate()
    with torch.no_grad():
        for batch in test_data:
            interaction, scores, positive_u, positive_i = score_matrix(batch)
            target = scores[positive_u, positive_i]
            rank = (scores[positive_u] >= target.unsqueeze(1)).sum(dim=1) - 1
            ranks.append(rank.cpu())
            if length_field in interaction:
                lengths.append(interaction[length_field][positive_u].cpu())
            else:
                lengths.append(torch.zeros_like(rank.cpu()))
            users.append(interaction[user_field][positive_u].cpu())
    return torch.cat(ranks), torch.cat(lengths), torch.cat(users)


def per_user_metric(ranks: torch.Tensor, metric: str) -> torch.Tensor:
    """Each row's value of ``metric`` (``ndcg@k``, ``hit@k``, ``recall@k``, ``mrr@k``,
    ``precision@k``) when the row has one held-out item at 0-based ``ranks``."""
    name, _, k = metric.lower().partition("@")
    k = int(k)
    inside = ranks < k
    zero = torch.zeros((), dtype=torch.float64)
    if name == "ndcg":
        return torch.where(inside, 1.0 / torch.log2(ranks.double() + 2.0), zero)
    if name in ("hit", "recall"):
        return inside.double()
    if name == "mrr":
        return torch.where(inside, 1.0 / (ranks.double() + 1.0), zero)
    if name == "precision":
        return inside.double() / k
    raise ValueError(f"no per-user value for {metric}")


def paired_users(a: tuple, b: tuple, metric: str = "ndcg@20") -> dict[str, float]:
    """Two models' per-user ``metric`` on the same test users (``(ranks, users)`` each, matched
    by user id): the mean difference a - b, relative to b, a paired t-test over users, and the
    users each ranks strictly better. Raises ValueError when the users differ."""
    from scipy import stats

    (ranks_a, users_a), (ranks_b, users_b) = a, b
    order_a, order_b = torch.argsort(users_a), torch.argsort(users_b)
    if not torch.equal(users_a[order_a], users_b[order_b]):
        raise ValueError("the two models were scored on different test users")
    ranks_a, ranks_b = ranks_a[order_a], ranks_b[order_b]  # row i is the same user in both
    x, y = per_user_metric(ranks_a, metric), per_user_metric(ranks_b, metric)
    t = stats.ttest_rel(x.numpy(), y.numpy())
    diff = (x - y).mean().item()
    base = y.mean().item()
    return {
        "users": int(x.numel()),
        "mean_diff": diff,
        "relative_diff": diff / base if base else float("nan"),
        "t": float(t.statistic),
        "p": float(t.pvalue),
        "a_better_users": int((ranks_a < ranks_b).sum()),
        "b_better_users": int((ranks_a > ranks_b).sum()),
    }
