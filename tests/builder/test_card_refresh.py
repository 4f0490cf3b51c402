"""build_family renders the card once per change of the files, not once more at the end (issue 24 item 1).

A render parses the card template's YAML (~0.3 s on a quiet 2-core machine, 10% of a 1B
model's raw build); a one-model build rendered it twice with the same result.
The model is a numpy-written Q/K-only llama checkpoint (no transformers: the test stays fast).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from qk_spectra_ds import dataset_card, dataset_repo
from qk_spectra_ds.builder.pipeline import build_family

RAW_QK = dict(variants=["raw"], offsets=[], circuits=["qk"], device="cpu", progress=False)


def qk_only_llama(directory: Path, seed: int) -> Path:
    """A 2-layer llama (d_model 32, 4 query / 2 key heads of 8) with only its Q and K tensors."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    tensors = {}
    for layer in range(2):
        prefix = f"model.layers.{layer}.self_attn."
        tensors[prefix + "q_proj.weight"] = rng.standard_normal((32, 32)).astype(np.float32)
        tensors[prefix + "k_proj.weight"] = rng.standard_normal((16, 32)).astype(np.float32)
    save_file(tensors, str(directory / "model.safetensors"))
    config = dict(
        model_type="llama",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=64,
        intermediate_size=64,
        max_position_embeddings=256,
        torch_dtype="float32",
    )
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_the_card_is_rendered_once_per_change_and_repaired_on_a_rerun(tmp_path, monkeypatch):
    models = [str(qk_only_llama(tmp_path / name, seed)) for seed, name in enumerate(("m1", "m2"))]
    out = tmp_path / "out"
    written = []
    real_write = dataset_card.write_card
    monkeypatch.setattr(dataset_card, "write_card", lambda out_dir: written.append(out_dir) or real_write(out_dir))

    build_family("T", out, models[:1], **RAW_QK)
    assert len(written) == 1  # was 2: after the model, and again at the end with nothing changed
    card = (out / dataset_repo.CARD_NAME).read_bytes()
    real_write(out)
    assert (out / dataset_repo.CARD_NAME).read_bytes() == card  # the skipped render would have written the same

    written.clear()
    build_family("T", out, models, **RAW_QK)  # m1 skipped, m2 built last: once, after m2
    assert len(written) == 1

    written.clear()
    (out / dataset_repo.CARD_NAME).unlink()  # an interrupted build's files without their card
    build_family("T", out, models, **RAW_QK)  # both skipped: the card is still rewritten
    assert len(written) == 1 and (out / dataset_repo.CARD_NAME).exists()
