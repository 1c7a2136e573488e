"""cxr_max.builder.specs: one spec per config, looked up by name (the builder never branches on the name)."""

from __future__ import annotations

import ast
from pathlib import Path

import datasets
import pytest

import cxr_max.builder as builder_pkg
from cxr_max.builder import CONFIG_NAMES, SPECS, ConfigSpec, CxrMax, CxrMaxConfig, features_for, spec_for

PACKAGE = Path(builder_pkg.__file__).parent


def test_the_registry_holds_the_six_configs_in_order():
    assert CONFIG_NAMES == ("mimic", "trajectories", "studies", "sft", "apo", "ms_cxr_t")
    assert tuple(SPECS) == CONFIG_NAMES
    for name, spec in SPECS.items():
        assert isinstance(spec, ConfigSpec) and spec.name == name and spec_for(name) is spec and spec.description
    assert [c.name for c in CxrMax.BUILDER_CONFIGS] == list(CONFIG_NAMES)
    assert [c.description for c in CxrMax.BUILDER_CONFIGS] == [SPECS[n].description for n in CONFIG_NAMES]


def test_an_unknown_config_is_a_clear_error_listing_the_configs():
    listing = str(CONFIG_NAMES).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"unknown config 'mimc'; configs: {listing}"):
        spec_for("mimc")
    with pytest.raises(ValueError, match=rf"unknown config 'mimc'; configs: {listing}"):
        features_for("mimc", CxrMaxConfig(name="mimc"))
    # a builder config without a spec (here: a subclass adding one) is refused by the registry
    class WithExtraConfig(CxrMax):
        BUILDER_CONFIGS = [*CxrMax.BUILDER_CONFIGS, CxrMaxConfig(name="mimc")]

    with pytest.raises(ValueError, match=rf"unknown config 'mimc'; configs: {listing}"):
        WithExtraConfig(config_name="mimc")
    # a plain name datasets does not know is refused by datasets itself, also listing them
    with pytest.raises(ValueError, match=r"'mimc' not found. Available: \['mimic', 'trajectories'"):
        CxrMax(config_name="mimc")


def test_each_builder_takes_its_features_from_its_spec():
    for name in CONFIG_NAMES:
        for images in ("decode", "path"):
            b = CxrMax(config_name=name, images=images)
            assert b.spec is SPECS[name]
            assert b.info.features == SPECS[name].features(b.config) == features_for(name, b.config)
    decoded = CxrMax(config_name="sft").info.features
    assert isinstance(decoded["images"].feature, datasets.Image) and decoded["images"].feature.mode == "RGB"
    paths = CxrMax(config_name="ms_cxr_t", images="path").info.features
    assert paths["image"] == paths["previous_image"] == datasets.Value("string")
    assert CxrMax(config_name="mimic").info.features["study_datetime"].dtype == "timestamp[us]"


def test_include_refusals_defaults_come_from_the_spec():
    assert [spec_for(n).keeps_refusals(CxrMaxConfig(name=n)) for n in ("sft", "trajectories")] == [False, True]
    assert spec_for("sft").keeps_refusals(CxrMaxConfig(name="sft", include_refusals=True))


def _name_comparisons(path: Path) -> list[str]:
    """``x.name == "..."`` / ``name == "..."`` / ``name in ("...", ...)`` comparisons in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        named = any((isinstance(s, ast.Attribute) and s.attr == "name") or (isinstance(s, ast.Name) and s.id == "name")
                    for s in sides)
        literal = any(isinstance(s, ast.Constant) and isinstance(s.value, str) and s.value in CONFIG_NAMES
                      or isinstance(s, (ast.Tuple, ast.List, ast.Set)) and any(
                          isinstance(e, ast.Constant) and e.value in CONFIG_NAMES for e in s.elts) for s in sides)
        if named and literal:
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_module_of_the_builder_branches_on_the_config_name(tmp_path):
    modules = sorted(PACKAGE.glob("*.py"))
    assert {p.name for p in modules} >= {"builder.py", "specs.py", "context.py", "shards.py", "config.py"}
    assert [hit for p in modules for hit in _name_comparisons(p)] == []
    # the detector finds what it looks for
    probe = tmp_path / "probe.py"
    probe.write_text('def f(cfg):\n    if cfg.name == "sft":\n        return 1\n    return name in ("apo", "x")\n')
    assert _name_comparisons(probe) == ["probe.py:2", "probe.py:4"]
