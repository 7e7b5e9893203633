"""Each equation of section 4 checked against a hand computation on tiny tensors."""

import math

import pytest
import torch
from torch.nn import functional as F

from model.inttower import FEBlock, LightSE, cir_loss, sum_of_max


def test_light_se_weights_sum_to_one_over_fields():
    se = LightSE(num_fields=5, mode="paper")
    e = torch.randn(7, 5, 3)
    k = se.field_weights(e)
    assert k.shape == (7, 5)
    torch.testing.assert_close(k.sum(dim=-1), torch.ones(7))
    assert (k > 0).all()


@pytest.mark.parametrize("mode", ["paper", "residual"])
def test_light_se_matches_eqs_3_to_5_by_hand(mode):
    se = LightSE(num_fields=2, mode=mode)
    with torch.no_grad():
        se.excitation.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, -1.0]]))
        se.excitation.bias.copy_(torch.tensor([0.5, 0.0]))
    e = torch.tensor([[[1.0, 3.0], [-2.0, 0.0]]])  # one row, fields (1,3) and (-2,0)
    z = [2.0, -1.0]  # eq 3: means over d
    logits = [1 * z[0] + 0 * z[1] + 0.5, 2 * z[0] - 1 * z[1] + 0.0]  # eq 4 before softmax: 2.5, 5.0
    norm = math.exp(logits[0]) + math.exp(logits[1])
    k = [math.exp(logits[0]) / norm, math.exp(logits[1]) / norm]
    scale = [1 + k[0], 1 + k[1]] if mode == "residual" else k
    expected = torch.tensor([[[1.0 * scale[0], 3.0 * scale[0]], [-2.0 * scale[1], 0.0]]])
    torch.testing.assert_close(se(e), expected)


def _sum_of_max_by_loop(user, items):
    """Eqs 8-9 literally: for each layer i and user head h_u, max over item heads h_v."""
    rows = max(user.shape[0], items.shape[0])
    out = []
    for b in range(rows):
        u = user[b if user.shape[0] > 1 else 0]
        v = items[b if items.shape[0] > 1 else 0]
        total = 0.0
        for i in range(u.shape[0]):  # user layers (eq 9)
            for hu in range(u.shape[1]):  # user heads (eq 8 sum)
                total += max(float(u[i, hu] @ v[hv]) for hv in range(v.shape[0]))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_fe_block_sum_of_max_equals_explicit_loop():
    torch.manual_seed(0)
    user = torch.randn(4, 3, 5, 6, dtype=torch.float64)  # B, L, H, p
    items = torch.randn(4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(sum_of_max(user, items), _sum_of_max_by_loop(user, items))


def test_fe_block_one_user_against_many_candidates_equals_loop():
    torch.manual_seed(1)
    user = torch.randn(1, 3, 2, 4, dtype=torch.float64)
    items = torch.randn(9, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(sum_of_max(user, items), _sum_of_max_by_loop(user, items))


def test_fe_block_dot_adds_bias_and_cosine_scales_normalised_heads():
    torch.manual_seed(2)
    user = torch.randn(3, 2, 4, 8)
    items = torch.randn(3, 4, 8)
    dot = FEBlock("dot", layers=2, heads=4, initial_scale=10.0)
    with torch.no_grad():
        dot.bias.fill_(0.25)
    torch.testing.assert_close(dot(dot.prepare(user), dot.prepare(items)), sum_of_max(user, items) + 0.25)
    assert not dot.log_scale.requires_grad

    cos = FEBlock("cosine", layers=2, heads=4, initial_scale=10.0)
    expected = 10.0 / 8 * sum_of_max(F.normalize(user, dim=-1), F.normalize(items, dim=-1))
    torch.testing.assert_close(cos(cos.prepare(user), cos.prepare(items)), expected)
    assert cos.log_scale.requires_grad


def _cir_by_hand(user, items, labels, item_ids, tau):
    """Eq 10 with python floats: -1/Q sum over clicked pairs of log softmax."""
    def cos(a, b):
        return float(a @ b) / (float(a.norm()) * float(b.norm()))

    terms = []
    for i in range(len(labels)):
        if labels[i] != 1:
            continue
        denominator = 0.0
        for j in range(len(labels)):
            if j != i and item_ids[j] == item_ids[i]:
                continue  # same item: not a negative
            denominator += math.exp(cos(user[i], items[j]) / tau)
        terms.append(math.log(math.exp(cos(user[i], items[i]) / tau) / denominator))
    return -sum(terms) / len(terms)


def test_cir_equals_eq_10_by_hand_with_same_item_masking():
    torch.manual_seed(3)
    user = torch.randn(5, 4, dtype=torch.float64)
    items = torch.randn(5, 4, dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    item_ids = torch.tensor([7, 8, 7, 9, 10])  # rows 0 and 2 show the same item
    got = cir_loss(user, items, labels, item_ids, temperature=0.5)
    expected = _cir_by_hand(user, items, [1, 0, 1, 1, 0], item_ids.tolist(), 0.5)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_cir_extra_window_items_join_the_negatives():
    torch.manual_seed(4)
    user = torch.randn(2, 3, dtype=torch.float64)
    items = torch.randn(2, 3, dtype=torch.float64)
    extra = torch.randn(3, 3, dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ids = torch.tensor([1, 2])
    extra_ids = torch.tensor([3, 1, 4])  # the second window entry is the anchor's item: masked
    got = cir_loss(user, items, labels, ids, 1.0, extra, extra_ids)
    expected = _cir_by_hand(
        torch.cat([user, torch.zeros(3, 3, dtype=torch.float64)]),
        torch.cat([items, extra]),
        [1, 0, 0, 0, 0],
        [1, 2, 3, 1, 4],
        1.0,
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_cir_without_clicks_is_zero_and_differentiable():
    user = torch.randn(3, 4, requires_grad=True)
    loss = cir_loss(user, torch.randn(3, 4), torch.zeros(3), torch.arange(3), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert user.grad is not None
