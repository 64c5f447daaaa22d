"""Config: --set overrides typed and validated, stages, JSON round-trip."""

from __future__ import annotations

import pytest

from shopee.config import Config, ConfigError, embedding_kinds, parse_stage, stages_of


def test_overrides_are_typed() -> None:
    cfg = Config().with_overrides(
        [
            "epochs=3",
            "lr_head=0.01",
            "amp=off",
            "text_model=",
            "fusion=none",
            "margin_start=0.2",
            'stages=[{"epochs": 1, "train": ["head"]}]',
            'loss_weights={"fused": 2.0}',
        ]
    )
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.lr_head == 0.01
    assert cfg.amp == "off"
    assert cfg.text_model == "" and cfg.fusion == "none"
    assert cfg.margin_start == 0.2
    assert cfg.stages == [{"epochs": 1, "train": ["head"]}]
    assert cfg.loss_weights == {"fused": 2.0}
    assert Config().with_overrides(["margin_start=none"]).margin_start is None


@pytest.mark.parametrize(
    "assignment, named",
    [
        ("epoch=3", "epoch"),  # unknown key (a typo)
        ("epochs=three", "epochs"),
        ("amp=maybe", "amp"),
        ("head=softmax", "head"),
        ("fusion=sideways", "fusion"),
        ("batch_size=0", "batch_size"),
        ("stages=[1]", "stages[0]"),
        ('stages=[{"epochs": 1, "train": ["wheels"]}]', "wheels"),
        ("augment={}", "augment"),
        ("noequals", "noequals"),
    ],
)
def test_bad_overrides_name_the_key(assignment: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config().with_overrides([assignment])
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_inconsistent_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="fusion"):
        Config(fusion="none").validate()  # two encoders need a fusion
    with pytest.raises(ConfigError, match="both encoders"):
        Config(text_model="", fusion="late").validate()
    with pytest.raises(ConfigError, match="image_model and text_model"):
        Config(image_model="", text_model="", fusion="none").validate()
    with pytest.raises(ConfigError, match="shared_projection"):
        Config(shared_projection=True).validate()


def test_json_round_trip_and_unknown_keys() -> None:
    cfg = Config(epochs=2, stages=[{"epochs": 1, "train": "all"}])
    assert Config.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="bogus"):
        Config.from_dict({**cfg.to_dict(), "bogus": 1})


def test_stages_express_the_classic_schedules() -> None:
    lp_ft = [{"epochs": 1, "train": ["neck", "head"]}, {"epochs": 4, "train": ["all"]}]
    alternate = [
        {"epochs": 1, "train": ["head"]},
        {"epochs": 1, "train": ["image", "text", "neck"], "lr_scale": 0.1},
        {"epochs": 1, "train": ["head"]},
        {"epochs": 1, "train": ["image", "text", "neck"], "lr_scale": 0.1},
    ]
    last_n = [{"epochs": 3, "train": ["image.last2", "text.last2", "neck", "head"]}]
    five = [
        {"epochs": 1, "train": ["head"]},
        {"epochs": 1, "train": ["neck", "head"]},
        {"epochs": 1, "train": ["image.last3", "text.last2", "neck", "head"]},
        {"epochs": 2, "train": ["all"], "lr_scale": 1.0},
        {"epochs": 1, "train": ["all"], "lr_scale": 0.1},
    ]
    for plan in (lp_ft, alternate, last_n, five):
        stages = stages_of(Config(stages=plan).validate())
        assert [s.epochs for s in stages] == [p["epochs"] for p in plan]
    assert stages_of(Config(stages=alternate))[1].lr_scale == 0.1
    assert stages_of(Config(epochs=4)) == [parse_stage({"epochs": 4, "train": ["all"]}, 0)]
    with pytest.raises(ConfigError, match="lastN|last"):
        parse_stage({"epochs": 1, "train": ["neck.last2"]}, 0)


def test_embedding_kinds_follow_the_encoders() -> None:
    assert embedding_kinds(Config()) == ["img", "txt", "fused"]
    assert embedding_kinds(Config(text_model="", fusion="none")) == ["img"]
    assert embedding_kinds(Config(image_model="", fusion="none")) == ["txt"]


def test_embed_dim_with_the_bn_neck_is_refused_not_ignored() -> None:
    # The bn neck keeps the encoder's width: an embed_dim there used to be dropped silently.
    with pytest.raises(ConfigError, match="embed_dim=256 has no effect with neck='bn'"):
        Config().with_overrides(["embed_dim=256"])
    assert Config(neck="linear_bn", embed_dim=256).validate().projection_dim == 256
    assert Config(neck="linear_bn").validate().projection_dim == 512  # the documented default
    # the shared projection maps to embed_dim whatever the neck
    assert Config(fusion="multi", shared_projection=True, embed_dim=64).validate().projection_dim == 64


def test_configs_of_older_runs_still_load() -> None:
    """A fold's config.json from before the precision policy (amp true/false, embed_dim with bn)."""
    old = {**Config().to_dict(), "amp": True, "embed_dim": 512}
    assert Config.from_dict(old).amp == "auto"
    assert Config.from_dict({**old, "amp": False}).amp == "off"


def test_a_protonce_stage_with_fusion_is_refused() -> None:
    """Its prototypes are clusters of one kind's embeddings: with two encoders they would meet
    features of another width at the first step after clustering."""
    stages = [{"epochs": 1, "loss": "protonce"}, {"epochs": 1}]
    with pytest.raises(ConfigError, match=r"stages\[0\].loss='protonce'.*fusion='late'"):
        Config(fusion="late", stages=stages).validate()
    Config(image_model="", fusion="none", stages=stages).validate()  # one encoder: fine
