"""core/settings.py: layering (defaults < TOML < env < overrides), text coercion, errors, round trips."""

import dataclasses
import json
import os
import pickle
from pathlib import Path

import pytest

from core.errors import ShoesearchError
from core.settings import SECRET_SETTINGS, SECTIONS, CrawlSettings, IndexSettings, ScheduleSettings, Settings, TrainSettings

# Captured from the dataclass implementation before the pydantic-settings rewrite (Settings() defaults).
OLD_TRAIN_JSON = (
    '{"amp": true, "backbone": "efficientnet_lite0", "batch_size": 8, "cache_refresh_queries": 1000, "clusters": 64, '
    '"descriptor_dim": 512, "device": "auto", "epochs": 10, "frozen_cache_mb": 2048, "hard_negatives": 10, '
    '"image_size": 224, "kmeans_descriptors": 50000, "kmeans_images": 1000, "kmeans_iterations": 25, "lr": 0.0001, '
    '"margin": 0.1, "max_positives": 5, "negatives_pool": 1000, "num_workers": 2, "patience": 3, '
    '"queries_per_epoch": 0, "seed": 0, "split_fractions": [0.7, 0.1, 0.2], "trainable_blocks": 2, '
    '"weight_decay": 0.0001, "whitening_photos": 8192}')
OLD_INDEX_JSON = (
    '{"approximate": "ivfpq", "exact_max_vectors": 200000, "hnsw_ef_construction": 80, "hnsw_ef_search": 128, '
    '"hnsw_m": 32, "index_all_photos": false, "ivf_lists": 0, "keep_indexes": 3, "nprobe": 256, '
    '"photos_per_query": 100, "pq_bits": 8, "pq_bytes": 64, "recall_k": 10, "recall_sample": 1000, "refine": "SQ8", '
    '"refine_factor": 16, "search_k": 10, "seed": 0, "train_sample": 200000}')


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("SHOESEARCH_"):
            monkeypatch.delenv(name)


def _home(tmp_path: Path, toml: str = "") -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    if toml:
        (home / "shoesearch.toml").write_text(toml, encoding="utf-8")
    return home


# Defaults changed on purpose since those literals were captured (docs/training.md, "The recipe").
TRAIN_DEFAULT_CHANGES = {"descriptor_dim": 256, "learn_whitening": True, "whitening_shrinkage": 0.1,
                         "trainable_blocks": 3, "flip_augment": False, "crop_colour_augment": False,
                         "lr_schedule": "constant", "processes": 0}  # processes: issue 27 (DDP on CPU)
INDEX_DEFAULT_CHANGES = {"incremental": True, "max_delta_fraction": 0.2}  # issue 27: updated, not rebuilt


def test_section_json_matches_the_old_implementation_on_defaults():
    """The format (sorted keys, JSON separators, tuples as lists) is the old implementation's; the values are its
    defaults with the deliberate changes above."""
    s = Settings()
    expected_train = json.dumps({**json.loads(OLD_TRAIN_JSON), **TRAIN_DEFAULT_CHANGES}, sort_keys=True)
    assert s.section_json("train") == expected_train
    assert s.section_json("index") == json.dumps({**json.loads(OLD_INDEX_JSON), **INDEX_DEFAULT_CHANGES}, sort_keys=True)
    assert Settings.load(home="/nonexistent-home").section_json("train") == expected_train


def test_defaults_and_sections_construct_without_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOESEARCH_TRAIN__EPOCHS", "3")  # Settings() alone reads neither env nor a file
    monkeypatch.chdir(_home(tmp_path, "[crawl]\nmax_products = 5\n"))
    s = Settings()
    assert (s.train.epochs, s.crawl.max_products) == (10, 200)
    assert CrawlSettings().max_products == 200 and IndexSettings().exact_max_vectors == 200_000
    assert ScheduleSettings().task_retries == 2 and TrainSettings().split_fractions == (0.7, 0.1, 0.2)
    assert Settings.load().train.epochs == 3  # load() does


def test_layering_defaults_toml_env_overrides(tmp_path, monkeypatch):
    home = _home(tmp_path, """
[train]
epochs = 7
margin = 0.2
lr = 0.5
amp = false
split_fractions = [0.5, 0.3, 0.2]
[crawl]
keywords = ["a", "b"]
categories = ["1,2"]
site = "http://toml"
[denoise]
drop_rate = 0.4
""")
    monkeypatch.setenv("SHOESEARCH_TRAIN__MARGIN", "0.3")
    monkeypatch.setenv("SHOESEARCH_TRAIN__LR", "0.25")
    monkeypatch.setenv("SHOESEARCH_TRAIN__AMP", "yes")
    monkeypatch.setenv("SHOESEARCH_TRAIN__SPLIT_FRACTIONS", "0.6;0.2;0.2")
    monkeypatch.setenv("SHOESEARCH_CRAWL__KEYWORDS", "鞋;靴子")
    monkeypatch.setenv("SHOESEARCH_CRAWL__SITE", "http://env")
    monkeypatch.setenv("SHOESEARCH_DENOISE__DROP_RATE", "none")
    s = Settings.load(home=home, overrides={"train.lr": "0.125", "crawl.site": "http://set", "train.amp": "0",
                                            "train.seed": None})  # None: not given
    assert s.train.epochs == 7  # toml over default
    assert s.train.margin == 0.3 and s.crawl.keywords == ["鞋", "靴子"]  # env over toml
    assert s.train.split_fractions == (0.6, 0.2, 0.2) and s.denoise.drop_rate is None
    assert (s.train.lr, s.crawl.site, s.train.amp) == (0.125, "http://set", False)  # overrides over env
    assert s.crawl.categories == ["1,2"] and s.train.seed == 0 and s.train.patience == 3
    assert isinstance(s.train.epochs, int) and isinstance(s.train.split_fractions, tuple)


@pytest.mark.parametrize("text, expected", [
    ('["鞋", "靴子"]', ["鞋", "靴子"]), ("鞋;靴子", ["鞋", "靴子"]), (" 鞋 ; 靴子 ;", ["鞋", "靴子"]),
    ("1318,12099,9756", ["1318,12099,9756"]), ("", []), ("[]", []), ("[1, 2]", ["1", "2"]),
])
def test_list_text_from_env_overrides_and_set(tmp_path, monkeypatch, text, expected):
    home = _home(tmp_path)
    assert Settings.load(home=home, overrides={"crawl.keywords": text}).crawl.keywords == expected
    monkeypatch.setenv("SHOESEARCH_CRAWL__CATEGORIES", text)
    assert Settings.load(home=home).crawl.categories == expected
    s = Settings()
    s.set("crawl.keywords", text)
    assert s.crawl.keywords == expected


def test_tuple_bool_and_optional_text(tmp_path):
    s = Settings.load(home=_home(tmp_path), overrides={"train.split_fractions": "[0.8, 0.1, 0.1]"})
    assert s.train.split_fractions == (0.8, 0.1, 0.1)
    s.set("train.split_fractions", [0.6, 0.3, 0.1])
    assert s.train.split_fractions == (0.6, 0.3, 0.1)
    for text, value in [("true", True), ("FALSE", False), ("1", True), ("0", False), ("yes", True), ("no", False),
                        ("on", True), ("off", False)]:
        s.set("index.index_all_photos", text)
        assert s.index.index_all_photos is value, text
    s.set("denoise.drop_rate", "0.05")
    assert s.denoise.drop_rate == 0.05
    for text in ("", "none", "null"):
        s.set("denoise.drop_rate", text)
        assert s.denoise.drop_rate is None
    s.set("embed.image_size", 96)  # typed values are taken as they are
    s.set("api.port", " 9000 ")
    assert (s.embed.image_size, s.api.port) == (96, 9000)


def _one_line_error(call, *words):
    with pytest.raises(ShoesearchError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    return info.value


def test_unknown_names_are_one_line_errors_naming_the_valid_ones(tmp_path, monkeypatch):
    home = _home(tmp_path)
    s = Settings()
    err = _one_line_error(lambda: s.set("train.epoch", 3), "unknown setting 'train.epoch'", "epochs", "margin")
    assert isinstance(err, KeyError) and err.args[0] == str(err)  # as before: the CLI prints args[0]
    _one_line_error(lambda: s.set("foo.bar", 1), "unknown settings section 'foo'", "crawl", "schedule")
    _one_line_error(lambda: Settings.load(home=home, overrides={"train.nope": "1"}), "'train.nope'", "epochs")
    _one_line_error(lambda: Settings.load(home=home, overrides={"trian.epochs": "1"}), "'trian'", "train")
    monkeypatch.setenv("SHOESEARCH_TRAIN__EPOCHZ", "3")
    _one_line_error(lambda: Settings.load(home=home), "unknown setting 'train.epochz'", "epochs")
    monkeypatch.delenv("SHOESEARCH_TRAIN__EPOCHZ")
    monkeypatch.setenv("SHOESEARCH_NOPE__X", "3")
    _one_line_error(lambda: Settings.load(home=home), "unknown settings section 'nope'")
    monkeypatch.delenv("SHOESEARCH_NOPE__X")
    (home / "shoesearch.toml").write_text("[train]\nepochz = 3\n")
    _one_line_error(lambda: Settings.load(home=home), "unknown setting 'train.epochz'")
    (home / "shoesearch.toml").write_text("[trian]\nepochs = 3\n")
    _one_line_error(lambda: Settings.load(home=home), "unknown settings section 'trian'")


def test_other_shoesearch_variables_are_not_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOESEARCH_RUN_ID", "r1")  # scrapy-side names, no "__": ignored as before
    monkeypatch.setenv("SHOESEARCH_TRAIN", '{"epochs": 3}')  # not a whole-section JSON variable either
    assert Settings.load(home=_home(tmp_path)).train.epochs == 10


def test_bad_values_are_one_line_errors_naming_key_and_type(tmp_path, monkeypatch):
    home = _home(tmp_path)
    s = Settings()
    err = _one_line_error(lambda: s.set("train.epochs", "abc"), "train.epochs", "'abc'", "int")
    assert isinstance(err, ValueError) and s.train.epochs == 10
    _one_line_error(lambda: Settings.load(home=home, overrides={"train.epochs": "abc"}), "train.epochs", "int")
    _one_line_error(lambda: s.set("index.index_all_photos", "maybe"), "index.index_all_photos", "bool")
    _one_line_error(lambda: s.set("denoise.threshold", "far"), "denoise.threshold", "float")
    _one_line_error(lambda: s.set("train.split_fractions", "0.5;0.5"), "train.split_fractions", "'0.5;0.5'", "3 float")
    _one_line_error(lambda: s.set("crawl.keywords", '["unclosed'), "crawl.keywords", "list")
    monkeypatch.setenv("SHOESEARCH_API__PORT", "eighty")
    _one_line_error(lambda: Settings.load(home=home), "api.port", "'eighty'", "int")
    monkeypatch.delenv("SHOESEARCH_API__PORT")
    (home / "shoesearch.toml").write_text('[train]\nepochs = "many"\n')
    _one_line_error(lambda: Settings.load(home=home), "train.epochs", "int")


def test_the_write_token_is_never_carried_recorded_or_printed(tmp_path, monkeypatch):
    """The API's write token: not in a flow's parameters (Prefect stores them), shown only as set in a run's
    recorded settings and by `shoesearch settings` (in every format), yet in force where it is read."""
    import subprocess
    import sys

    from warehouse import open_warehouse

    home = _home(tmp_path, '[api]\nwrite_token = "file-secret-123"\n')
    monkeypatch.setenv("SHOESEARCH_API__WRITE_TOKEN", "env-secret-456")
    s = Settings.load(home=home, overrides={"api.write_token": "set-secret-789"})
    assert s.api.write_token == "set-secret-789"
    assert "api.write_token" not in s.as_overrides() and s.shown()["api.write_token"] == "(set)"
    assert open_warehouse(s).effective_settings["api.write_token"] == "(set)"
    for fmt in ("table", "csv", "json"):
        out = subprocess.run([sys.executable, "-m", "shoesearch", "--home", str(home), "--set",
                              "api.write_token=set-secret-789", "settings", "--explain", "--format", fmt],
                             capture_output=True, text=True, check=True).stdout
        assert "write_token" in out and "(set)" in out and "secret-" not in out, out


def test_as_overrides_round_trips_through_json_and_load(tmp_path, monkeypatch):
    home = _home(tmp_path, "[index]\nnprobe = 4\n")
    monkeypatch.setenv("SHOESEARCH_CRAWL__KEYWORDS", "鞋;靴子")
    s = Settings.load(home=home, overrides={"train.split_fractions": "0.6;0.2;0.2", "denoise.drop_rate": "0.1",
                                            "train.amp": "false", "schedule.timezone": "UTC"})
    overrides = json.loads(json.dumps(s.as_overrides()))
    assert len(overrides) == sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values()) - len(SECRET_SETTINGS)
    assert overrides["train.split_fractions"] == [0.6, 0.2, 0.2] and overrides["index.nprobe"] == 4
    monkeypatch.delenv("SHOESEARCH_CRAWL__KEYWORDS")
    (home / "shoesearch.toml").unlink()
    again = Settings.load(home=home, overrides=overrides)
    assert again.as_dict() == s.as_dict() and again == s
    assert all(again.section_json(name) == s.section_json(name) for name in SECTIONS)
    assert list(s.as_dict()) == ["home", *SECTIONS] and s.as_dict()["home"] == str(home.resolve())


def test_attribute_assignment_is_plain(tmp_path):
    s = Settings.load(home=_home(tmp_path))
    s.index.exact_max_vectors = 10
    s.train.epochs = 1
    s.index.approximate = "hnsw"
    assert (s.index.exact_max_vectors, s.train.epochs, s.index.approximate) == (10, 1, "hnsw")
    assert json.loads(s.section_json("index"))["exact_max_vectors"] == 10
    s.set("train.lr", "0.5")  # set() validates only the field it sets
    assert s.train.lr == 0.5 and s.train.epochs == 1


def test_sections_keep_the_dataclass_api():
    """crawlers/config.py uses dataclasses.asdict, tests/test_index.py and bench/search.py dataclasses.replace."""
    cfg = IndexSettings(exact_max_vectors=1_000)
    other = dataclasses.replace(cfg, approximate="hnsw")
    assert (other.approximate, other.exact_max_vectors, cfg.approximate) == ("hnsw", 1_000, "ivfpq")
    assert dataclasses.asdict(Settings().crawl)["keywords"] == ["男鞋", "女鞋", "运动鞋", "靴子", "凉鞋"]
    assert [f.name for f in dataclasses.fields(TrainSettings)][:3] == ["backbone", "image_size", "clusters"]
    assert vars(Settings().crawl)["max_products"] == 200
    s = Settings.load(home="/nonexistent-home")
    assert pickle.loads(pickle.dumps(s)) == s


def test_home_argument_env_and_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Settings.load().home == tmp_path.resolve() / "data" == Settings().home
    monkeypatch.setenv("SHOESEARCH_HOME", str(tmp_path / "env-home"))
    s = Settings.load()
    assert s.home == (tmp_path / "env-home").resolve() and Settings().home == s.home
    assert Settings.load(home=tmp_path / "arg").home == (tmp_path / "arg").resolve()
    (tmp_path / "env-home").mkdir()
    (tmp_path / "env-home" / "shoesearch.toml").write_text("[train]\nepochs = 4\n")
    assert Settings.load().train.epochs == 4  # the file of the home in use
    assert Settings.load(home="relative").home == tmp_path.resolve() / "relative"
    h = s.home
    assert (s.warehouse_dir, s.images_dir, s.crawl_dir, s.models_dir, s.indexes_dir, s.reports_dir) == (
        h / "warehouse", h / "images", h / "crawl", h / "models", h / "indexes", h / "reports")
    assert (s.views_path, s.snapshot_path, s.config_path) == (
        h / "catalog.duckdb", h / "snapshot.duckdb", h / "shoesearch.toml")


# --- ranges (issue 25 item 10): every numeric setting has one, and a value outside it is a one-line error ------
ISSUE_EXAMPLES = [  # (setting, value, the range the error names): each was accepted before
    ("train.epochs", "0", "an integer >= 1"), ("train.clusters", "-3", "an integer >= 1"),
    ("train.margin", "nan", "a finite number > 0"), ("index.keep_indexes", "-5", "an integer >= 1"),
    ("api.port", "99999", "an integer >= 1 and <= 65535"),
    ("schedule.gate_tolerance", "nan", "a finite number >= 0 and <= 1"),
    ("embed.gem_p", "nan", "a finite number > 0 and <= 16"), ("embed.image_size", "0", "an integer >= 32"),
]


@pytest.mark.parametrize(("dotted", "value", "allowed"), ISSUE_EXAMPLES)
def test_out_of_range_values_are_refused_in_one_line_by_cli_env_and_toml(tmp_path, monkeypatch, capsys, dotted,
                                                                          value, allowed):
    from shoesearch.cli import main

    home = _home(tmp_path)
    expected = f"setting {dotted}: '{value}' is out of range (allowed: {allowed})"
    assert main(["--home", str(home), "--set", f"{dotted}={value}", "settings"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"shoesearch: error: {expected}\n")
    section, key = dotted.split(".")
    monkeypatch.setenv(f"SHOESEARCH_{section.upper()}__{key.upper()}", value)
    assert str(_one_line_error(lambda: Settings.load(home=home))) == expected
    monkeypatch.delenv(f"SHOESEARCH_{section.upper()}__{key.upper()}")
    (home / "shoesearch.toml").write_text(f"[{section}]\n{key} = {value}\n")  # a TOML number (nan is one too)
    _one_line_error(lambda: Settings.load(home=home), f"setting {dotted}: ", " is out of range",
                    f"(allowed: {allowed})")
    _one_line_error(lambda: Settings().set(dotted, value), expected)


def _numeric_fields() -> list[tuple[str, type]]:
    """(section.field, int or float) for every field holding numbers (alone, in a tuple or optional)."""
    from typing import get_args

    from core.setting_text import bare_type

    out = []
    for name, cls in SECTIONS.items():
        for key, info in cls.__pydantic_fields__.items():
            bare = bare_type(info.annotation)
            kinds = [k for k in (float, int) if k in (bare, *get_args(bare))]
            if kinds:
                out.append((f"{name}.{key}", kinds[0]))
    return out


@pytest.mark.parametrize(("dotted", "kind"), _numeric_fields())
def test_every_numeric_setting_has_a_range_that_its_default_satisfies(tmp_path, dotted, kind):
    """A new numeric field cannot skip its range: ints refuse a huge negative count, floats NaN and infinities."""
    section, key = dotted.split(".")
    default = getattr(Settings(), section).__dict__[key]
    assert getattr(Settings.load(home=_home(tmp_path), overrides={dotted: default}), section).__dict__[key] == default
    width = len(default) if isinstance(default, tuple) else 1
    for bad in (["-1" + "0" * 30] if kind is int else ["nan", "inf", "-inf", "-1e300"]):
        text = ";".join([bad] * width)
        _one_line_error(lambda: Settings.load(home=_home(tmp_path), overrides={dotted: text}), f"setting {dotted}: ",
                        "is out of range (allowed: ")


def test_checks_across_fields_and_inside_tuples_are_one_line(tmp_path):
    home = _home(tmp_path)
    _one_line_error(lambda: Settings.load(home=home, overrides={"train.split_fractions": "0.5;0.6;0.1"}),
                    "setting train.split_fractions: '0.5;0.6;0.1' is out of range: the train / val / test shares "
                    "must sum to 1, not 1.2")
    _one_line_error(lambda: Settings.load(home=home, overrides={"train.split_fractions": [0.5, 2, 0.1]}),
                    "setting train.split_fractions: 2 (item 1) is out of range", "each a finite number >= 0 and <= 1")
    _one_line_error(lambda: Settings.load(home=home, overrides={"train.hard_negatives": 20, "train.negatives_pool": 8}),
                    "settings: train.hard_negatives (20) must not exceed train.negatives_pool (8)")
    assert Settings.load(home=home, overrides={"denoise.drop_rate": "none"}).denoise.drop_rate is None
    _one_line_error(lambda: Settings.load(home=home, overrides={"denoise.drop_rate": "1"}),
                    "setting denoise.drop_rate: '1' is out of range (allowed: a finite number >= 0 and < 1, or none)")
    _one_line_error(lambda: Settings.load(home=home, overrides={"train.lr_schedule": "cos"}),
                    "setting train.lr_schedule: cannot read 'cos' as one of 'constant', 'cosine'")
    _one_line_error(lambda: Settings.load(home=home, overrides={"sql.memory_limit": "4 gigs"}),
                    "setting sql.memory_limit: '4 gigs' is not allowed (allowed: text matching ")
