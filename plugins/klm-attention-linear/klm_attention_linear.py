"""Causal linear attention (Katharopoulos et al., 2020, "Transformers are RNNs").

Softmax attention weighs value s for query t by exp(q_t.k_s). Replace that by a product of
positive features, phi(q_t).phi(k_s) with phi(x) = elu(x) + 1, and the sums over the past
factor:

    y_t = phi(q_t) S_t / (phi(q_t) . z_t)
    S_t = sum_{s<=t} phi(k_s) v_s^T        (a D x D matrix)
    z_t = sum_{s<=t} phi(k_s)              (a D vector)

S and z are running (cumulative) sums, so time and memory grow linearly with T: no T x T matrix
is ever formed. There is no score matrix either, so an additive score bias (ALiBi) has nowhere
to go: this attention does not provide "score_bias", and such pairs are refused.
"""

import torch.nn.functional as F
from torch import nn

from kennethlm_core import hookimpl


class LinearAttention(nn.Module):
    def __init__(self, cfg, eps=1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, q, k, v, bias=None):
        if bias is not None:
            raise ValueError("linear attention has no score matrix and cannot take a score bias")
        q, k = F.elu(q) + 1, F.elu(k) + 1  # positive features
        S = (k.unsqueeze(-1) * v.unsqueeze(-2)).cumsum(dim=2)  # (B, H, T, D, D): sum of k v^T
        z = k.cumsum(dim=2)  # (B, H, T, D): sum of k
        numerator = (q.unsqueeze(-2) @ S).squeeze(-2)  # (B, H, T, D)
        denominator = (q * z).sum(dim=-1, keepdim=True)  # (B, H, T, 1), positive
        return numerator / (denominator + self.eps)


@hookimpl
def klm_register_attention(register):
    register(
        "linear",
        LinearAttention,
        "causal linear attention: elu+1 features, running sums, O(T)",
    )
