import pytest

from convnext_export.config import ConvNeXtConfig, UnknownSizeError, find_config, get_config, register_size, size_names

PUBLISHED = {  # REFERENCE.md: timm results tables / paper
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xlarge": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
PUBLISHED_V2 = {  # timm convnextv2_* (small is timm's only), facebookresearch/ConvNeXt-V2
    "v2-atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "v2-femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "v2-pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "v2-nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "v2-tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "v2-small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "v2-base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "v2-large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "v2-huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}


def test_registry_has_the_published_sizes():
    assert size_names() == list(PUBLISHED) + list(PUBLISHED_V2)
    for name, (depths, dims) in PUBLISHED.items():
        config = get_config(name)
        assert (config.depths, config.dims) == (depths, dims)
        assert config.num_classes == 1000 and config.layer_scale_init == 1e-6 and config.norm_eps == 1e-6
        assert config.family == "v1" and not config.uses_grn
        assert find_config(depths, dims).name == name
    for name, (depths, dims) in PUBLISHED_V2.items():
        config = get_config(name)
        assert (config.depths, config.dims) == (depths, dims)
        assert config.family == "v2" and config.uses_grn and config.layer_scale_init is None
        assert config.grn_eps == 1e-6 and config.size == name.removeprefix("v2-")
        assert find_config(depths, dims, "v2").name == name


def test_v2_sizes_match_timm():
    timm = pytest.importorskip("timm")
    import torch

    for name, (depths, dims) in PUBLISHED_V2.items():
        with torch.device("meta"):  # structure only: no memory for the weights
            model = timm.create_model(f"convnextv2_{name.removeprefix('v2-')}", pretrained=False)
        assert tuple(len(stage.blocks) for stage in model.stages) == depths, name
        assert tuple(stage.blocks[0].conv_dw.in_channels for stage in model.stages) == dims, name


def test_family_is_checked_against_layer_scale():
    with pytest.raises(ValueError, match="no layer scale"):
        ConvNeXtConfig("v2-x", (1, 1, 1, 1), (8, 8, 8, 8), family="v2")
    with pytest.raises(ValueError, match="unknown ConvNeXt family"):
        ConvNeXtConfig("x", (1, 1, 1, 1), (8, 8, 8, 8), family="v3")


def test_manifests_without_family_read_as_v1():
    data = get_config("tiny").to_dict()
    del data["family"]
    assert ConvNeXtConfig.from_dict(data).family == "v1"
    v2 = get_config("v2-nano", num_classes=5)
    assert ConvNeXtConfig.from_dict(v2.to_dict()) == v2


def test_unknown_size_lists_valid_sizes():
    with pytest.raises(UnknownSizeError) as error:
        get_config("huge")
    assert "huge" in str(error.value) and "atto" in str(error.value) and "xlarge" in str(error.value)


def test_duplicate_registration_raises():
    def convnext_tiny() -> ConvNeXtConfig:
        return ConvNeXtConfig("tiny", (1, 1, 1, 1), (8, 8, 8, 8))

    with pytest.raises(ValueError, match="registered twice"):
        register_size(convnext_tiny)


def test_config_round_trips_through_dict_and_is_frozen():
    config = get_config("nano", num_classes=7)
    assert ConvNeXtConfig.from_dict(config.to_dict()) == config
    with pytest.raises(AttributeError):
        config.num_classes = 3  # type: ignore[misc]
