"""The registry of model types is the only one: each record holds its layout, layer facts and folding rule.

Adding a model type is one record (``qk_spectra_ds.builder.model_types``) and its tiny-model case;
no second per-type table (the folding rules of ``folding.py`` and the OV facts of ``ov.py`` used to
be one each) can be left out of step with the registry.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
from tiny_models import CASES, CASES_2026

from qk_spectra_ds.builder import folding
from qk_spectra_ds.builder.architectures import (
    FOLDABLE_MODEL_TYPES,
    MODEL_TYPES,
    SUPPORTED_MODEL_TYPES,
    model_type_for,
    registry,
)
from qk_spectra_ds.builder.latent_layout import LatentAttention
from qk_spectra_ds.builder.layouts import FusedSections, SeparateProjections
from qk_spectra_ds.builder.model_types.folding_rules import FoldingFacts
from qk_spectra_ds.builder.model_types.record import ModelType
from qk_spectra_ds.errors import UnsupportedArchitectureError

BUILDER = Path(folding.__file__).parent


def _config_json(case) -> dict:
    """The config.json transformers would save for a case (its config class's defaults filled in)."""
    import transformers

    return json.loads(getattr(transformers, case.config_cls)(**case.config).to_json_string())


@pytest.fixture(scope="module")
def case_configs() -> list[dict]:
    return [_config_json(case) for case in CASES + CASES_2026]


def test_every_record_is_registered_under_its_own_name():
    assert SUPPORTED_MODEL_TYPES == tuple(sorted(MODEL_TYPES))
    for name, record in MODEL_TYPES.items():
        assert isinstance(record, ModelType) and record.name == name
        assert callable(record.shape_fn) and callable(record.layout_fn) and callable(record.facts_fn)
        assert record.folding is None or callable(record.folding)
    assert FOLDABLE_MODEL_TYPES == tuple(sorted(n for n, r in MODEL_TYPES.items() if r.folding is not None))


@pytest.mark.slow  # transformers' config classes: ~10 s on a loaded machine
def test_every_case_reads_its_layer_facts_and_folding_from_its_record(case_configs):
    """Layer facts for every case; the folded variant's facts exactly where the record has a rule."""
    seen = set()
    for config in case_configs:
        record = model_type_for(config)
        seen.add(record.name)
        assert record.layer_facts(config), record.name
        inner = folding.text_settings(config).get("model_type", record.name)
        rule = (MODEL_TYPES[inner].folding if inner in MODEL_TYPES else None) or record.folding
        if rule is None:
            with pytest.raises(UnsupportedArchitectureError, match="not implemented for model_type"):
                folding.folding_facts(config, 0)
        else:
            facts = folding.folding_facts(config, 0)
            assert isinstance(facts, FoldingFacts) and facts.scale > 0, record.name
    assert seen == set(MODEL_TYPES)  # every record is exercised by a case


@pytest.mark.slow  # transformers' config classes, as above
def test_every_layout_names_its_v_and_o_beside_q_and_k(case_configs):
    """The OV circuit's tensors come from the record's layout (no table of names keyed by suffix in ov.py)."""
    for config in case_configs:
        layout = model_type_for(config).layout(config)
        if isinstance(layout, LatentAttention):  # V shares the latent with K (kv_b_proj), O is o_proj
            continue
        names = (layout.v_name, layout.o_name) if isinstance(layout, SeparateProjections) else (layout.o_name,)
        assert all("{layer}" in n and n.endswith(".weight") for n in names), layout
        assert len({*names, layout.query_tensor(0)}) == len(names) + 1
    with pytest.raises(TypeError):
        SeparateProjections("layers.{layer}.q.weight", "layers.{layer}.k.weight")  # V and O must be named too
    with pytest.raises(TypeError):
        FusedSections("layers.{layer}.qkv.weight")


def test_a_record_without_a_folding_rule_or_layer_facts_cannot_be_made():
    llama = MODEL_TYPES["llama"]
    parts = dict(name="new_type", shape_fn=llama.shape_fn, layout_fn=llama.layout_fn, facts_fn=llama.facts_fn)
    with pytest.raises(TypeError, match="folding"):
        ModelType(**parts)  # the folding rule must be said, even when it is None (not implemented)
    with pytest.raises(TypeError, match="facts_fn"):
        ModelType(**{k: v for k, v in parts.items() if k != "facts_fn"}, folding=None)
    with pytest.raises(TypeError, match="folding must be a rule"):
        ModelType(**parts, folding="llama")
    assert ModelType(**parts, folding=None).folding is None
    assert dataclasses.fields(ModelType)  # frozen records: a registered one cannot be changed afterwards
    with pytest.raises(dataclasses.FrozenInstanceError):
        llama.folding = None


def test_the_registry_refuses_a_second_record_of_one_name_and_non_records():
    llama = MODEL_TYPES["llama"]
    assert set(registry([llama, MODEL_TYPES["gpt2"]])) == {"llama", "gpt2"}
    with pytest.raises(ValueError, match="registered twice"):
        registry([llama, dataclasses.replace(llama, folding=None)])
    with pytest.raises(TypeError, match="not a ModelType"):
        registry([llama, ("mamba", None)])


def _string_constants(path: Path) -> set[str]:
    return {
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_no_module_outside_the_records_keys_anything_by_model_type():
    """Only the family modules of model_types/ name model types: no second table to forget elsewhere."""
    records = BUILDER / "model_types"
    # behaviour.py runs transformers' own models: its ENCODER_TYPES names encoders the builder does not read too
    allowed = {"behaviour.py": {"bert", "modernbert"}}
    offenders = {
        str(path.relative_to(BUILDER)): sorted(_string_constants(path) & set(MODEL_TYPES))
        for path in BUILDER.rglob("*.py")
        if records not in path.parents
    }
    assert not {path: names for path, names in offenders.items() if set(names) - allowed.get(path, set())}
