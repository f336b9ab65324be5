"""timm's names in --size: the recorded pretrained tags against the installed timm, and name resolution."""

import pytest

from convnext_export.config import (HEADLESS_TAGS, PRETRAINED, UnknownSizeError, get_config, resolve_model_name,
                                    size_names, timm_names)

timm_convnext = pytest.importorskip("timm.models.convnext")


def _timm_tags() -> dict[str, dict]:
    """Every pretrained tag timm publishes for the registered architectures, with its pretrained_cfg."""
    tags = {}
    for architecture in timm_names():
        default = timm_convnext.default_cfgs[architecture]
        for tag in default.tags:
            tags[f"{architecture}.{tag}"] = default.cfgs[tag].to_dict()
    return tags


def test_recorded_tags_are_timms_with_its_preprocessing():
    published = _timm_tags()
    with_head = {name: cfg for name, cfg in published.items() if cfg["num_classes"]}
    assert set(PRETRAINED) == set(with_head)
    assert {name.partition(".")[2] for name in set(published) - set(with_head)} == set(HEADLESS_TAGS)
    for name, recorded in PRETRAINED.items():
        cfg = with_head[name]
        assert (3, recorded.image_size, recorded.image_size) == tuple(cfg["input_size"]), name
        assert recorded.crop_pct == cfg["crop_pct"] and recorded.interpolation == cfg["interpolation"], name
        assert recorded.mean == tuple(cfg["mean"]) and recorded.std == tuple(cfg["std"]), name
        assert recorded.num_classes == cfg["num_classes"], name
        assert cfg["hf_hub_id"].rstrip("/") == "timm", name  # on the hub as timm/<name>


@pytest.mark.parametrize("size", size_names())
def test_timm_architecture_names_build_timms_model(size):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    config = get_config(f"convnext_{size}")
    with torch.device("meta"):  # shapes only: no memory, no init time for xlarge
        reference = timm.create_model(f"convnext_{size}", pretrained=False)
    assert config == get_config(size)
    assert [len(stage.blocks) for stage in reference.stages] == list(config.depths)
    assert [stage.blocks[0].conv_dw.out_channels for stage in reference.stages] == list(config.dims)


def test_a_tag_selects_its_preprocessing_and_classes():
    name = resolve_model_name("convnext_tiny.in12k_ft_in1k")
    assert (name.size, name.tag, name.timm_name) == ("tiny", "in12k_ft_in1k", "convnext_tiny.in12k_ft_in1k")
    assert name.pretrained.preprocessing.crop_pct == 0.95
    assert name.pretrained.preprocessing.resize_size == 235  # timm: floor(224 / 0.95)
    assert get_config("convnext_tiny.fb_in22k").num_classes == 21841
    assert get_config("convnext_tiny.fb_in22k", num_classes=10).num_classes == 10
    assert resolve_model_name("convnext_base.clip_laion2b_augreg_ft_in1k").pretrained.preprocessing.image_size == 256


@pytest.mark.parametrize("name, says", [
    ("convnext_tinny", ["close matches: convnext_tiny", "valid sizes: atto"]),
    ("tinyy", ["close matches: tiny"]),
    ("resnet50", ["unknown ConvNeXt size 'resnet50'", "valid sizes"]),
    ("convnext_tiny.fb_in1kk", ["unknown pretrained tag 'fb_in1kk' for convnext_tiny", "close matches: fb_in1k"]),
    ("convnext_tiny.dinov3_lvd1689m", ["headless feature extractor", "convnext_tiny.fb_in1k"]),
    ("convnextv2_tiny.fcmae_ft_in1k", ["ConvNeXt V2", "convnext_tiny"]),
])
def test_unknown_names_list_close_matches(name, says):
    with pytest.raises(UnknownSizeError) as error:
        resolve_model_name(name)
    for phrase in says:
        assert phrase in str(error.value)


def test_a_tag_without_weights_says_the_weights_are_random_and_how_to_load_them():
    from convnext_export.pipeline import load_reference

    logged = []
    reference = load_reference("convnext_atto.d2_in1k", None, None, 0, log=logged.append)
    assert reference.weights.to_dict()["kind"] == "random" and reference.preprocessing.crop_pct == 0.875
    assert logged == ["convnext_atto.d2_in1k: its preprocessing and classes, with seeded random weights; "
                      "--weights hf-hub:timm/convnext_atto.d2_in1k loads its published weights"]
