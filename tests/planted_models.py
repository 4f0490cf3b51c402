"""A 2-layer GPT-2 whose heads are planted by hand (shared by the behaviour tests).

A 2-layer GPT-2 (learned absolute positions, MLPs zeroed) whose residual stream is laid out by hand:
token one-hot, position one-hot and a "previous token" slot, each mirrored (x = [u, -u]) so that
LayerNorm only rescales. Planted: layer 0 head 0 attends to the previous position and copies its token
into the previous-token slot; layer 0 head 1 sinks to position 0 (a constant query bias against a
position-0 key); layer 1 head 0 is an induction head (query: the current token; key: the previous-token
slot written by layer 0 head 0); layer 1 head 1 is all zeros (uniform attention).
"""

from __future__ import annotations

import math

import numpy as np
import torch

V, P, T = 24, 32, 8  # vocabulary, positions, probe repeat length
D = V + P + V  # u-space: token | position | previous token
TOK, POS, PREV = 0, V, V + P
PLANTED = {"previous_token": (0, 0), "first_token": (0, 1), "induction": (1, 0)}


def planted_gpt2(c: float = 10.0):
    import transformers

    config = transformers.GPT2Config(
        vocab_size=V,
        n_positions=P,
        n_embd=2 * D,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    d, dh = 2 * D, D  # d_model, d_head (2 heads)
    s0 = math.sqrt(d / 4)  # LayerNorm's scale at layer 0: ||x||^2 = 2 (token + position), std = ||x|| / sqrt(d)

    def mirrored(u):
        return np.concatenate([u, -u], axis=-1)

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.fill_(1.0)
        model.transformer.wte.weight.copy_(torch.from_numpy(mirrored(np.eye(V, D, TOK))))
        model.transformer.wpe.weight.copy_(torch.from_numpy(mirrored(np.eye(P, D, POS))))
        a0, a1 = model.transformer.h[0].attn, model.transformer.h[1].attn
        w = a0.c_attn.weight  # Conv1D (in, 3d): q | k | v, head h at columns h*dh .. (h+1)*dh of each
        for k in range(P - 1):  # head 0: query position t matches key position t-1
            w[POS + k + 1, k] = c
            w[POS + k, d + k] = 1.0
        for m in range(V):  # head 0 copies the key's token ...
            w[TOK + m, 2 * d + m] = 1.0
            a0.c_proj.weight[m, PREV + m] = 1.0 / s0  # ... into the previous-token slot (mirrored)
            a0.c_proj.weight[m, D + PREV + m] = -1.0 / s0
        a0.c_attn.bias[dh] = 10 * c  # head 1: a constant query ...
        w[POS + 0, d + dh] = 1.0  # ... against "key is position 0"
        w = a1.c_attn.weight
        for m in range(V):  # layer 1 head 0: query = current token, key = the token before the key
            w[TOK + m, m] = c
            w[PREV + m, d + m] = 1.0
    return model
