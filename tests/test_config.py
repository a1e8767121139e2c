from __future__ import annotations

import re
from pathlib import Path

import pytest

from coupon_spark.config import Config, ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_local_extends_base_and_overrides_only_what_it_sets():
    cfg = Config.from_file(CONF / "local.yaml")
    assert cfg.spark.master == "local[*]"
    assert cfg.spark.shuffle_partitions == 4  # local.yaml
    assert cfg.spark.arrow_batch_size == 20000  # base.yaml
    assert cfg.spark.conf == {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
    assert cfg.lake.backend == "auto"
    assert cfg.lake.tables["allocations"] == "gold/allocations"
    assert Path(cfg.lake.root).is_absolute()


def test_gpu_cluster_merges_spark_conf_through_two_levels():
    cfg = Config.from_file(CONF / "gpu-cluster.yaml")
    assert cfg.spark.conf["spark.jars.packages"] == "io.delta:delta-spark_4.2_2.13:4.4.0"  # cluster.yaml
    assert cfg.spark.conf["spark.task.resource.gpu.amount"] == "1"  # gpu-cluster.yaml
    assert cfg.spark.master == ""
    assert cfg.lake.backend == "native"
    assert cfg.lake.root == "s3a://coupon-lake/prod"


def test_overrides_are_typed_and_applied_last():
    cfg = Config.from_file(CONF / "local.yaml", overrides=["lake.root=/tmp/x", "spark.shuffle_partitions=3"])
    assert cfg.lake.root == "/tmp/x"
    assert cfg.spark.shuffle_partitions == 3
    assert cfg.lake.table_path("orders") == "/tmp/x/silver/orders"
    assert cfg.lake.table_path("/abs/t") == "/abs/t"


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    write(tmp_path, "base.yaml", "spark: {}\nlake: {root: /r, landing: /l}\n")
    env = write(tmp_path, "env.yaml", "extends: base.yaml\nspark:\n  shufle_partitions: 4\n")
    with pytest.raises(ConfigError) as err:
        Config.from_file(env)
    msg = str(err.value)
    assert "spark.shufle_partitions" in msg
    assert str(env) in msg
    assert "shuffle_partitions" in msg  # says what is accepted


def test_wrong_type_names_the_key_and_the_file_it_came_from(tmp_path):
    base = write(tmp_path, "base.yaml", "spark: {shuffle_partitions: many}\nlake: {root: /r, landing: /l}\n")
    env = write(tmp_path, "env.yaml", "extends: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: spark\.shuffle_partitions: expected an integer, found 'many'"):
        Config.from_file(env)
    assert base.exists()


def test_bool_is_not_an_integer(tmp_path):
    env = write(tmp_path, "env.yaml", "spark: {shuffle_partitions: true}\nlake: {root: /r, landing: /l}\n")
    with pytest.raises(ConfigError, match=r"spark\.shuffle_partitions"):
        Config.from_file(env)


def test_missing_required_value(tmp_path):
    env = write(tmp_path, "env.yaml", "spark: {}\nlake: {landing: /l}\n")
    with pytest.raises(ConfigError, match=r"missing required key 'lake\.root'"):
        Config.from_file(env)


def test_literal_choices_are_checked(tmp_path):
    env = write(tmp_path, "env.yaml", "spark: {}\nlake: {root: /r, landing: /l, backend: delta}\n")
    with pytest.raises(ConfigError, match=r"lake\.backend: must be one of 'auto', 'bridge', 'native', found 'delta'"):
        Config.from_file(env)


def test_extends_cycle_and_missing_file(tmp_path):
    a = write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        Config.from_file(a)
    with pytest.raises(ConfigError, match="cannot read"):
        Config.from_file(tmp_path / "nope.yaml")


def test_unsafe_yaml_is_refused(tmp_path):
    env = write(tmp_path, "env.yaml", "spark: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.from_file(env)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        Config.from_file(CONF / "local.yaml", overrides=["lake.root"])


def test_float_written_without_a_dot_is_a_number(tmp_path):
    env = write(tmp_path, "env.yaml", "extends: " + str(CONF / "base.yaml") + "\ntrain: {l2: 1e-4}\n")
    assert Config.from_file(env).train.l2 == 1e-4
    bad = write(tmp_path, "bad.yaml", "extends: " + str(CONF / "base.yaml") + "\ntrain: {l2: tiny}\n")
    with pytest.raises(ConfigError, match=r"train\.l2: expected a number, found 'tiny'"):
        Config.from_file(bad)


def test_an_unknown_key_from_set_blames_set_not_the_file():
    """``--set foo.bar=1`` creates the unknown section ``foo``: the error names --set, not conf/local.yaml."""
    with pytest.raises(ConfigError, match=r"^--set: unknown key 'foo'; the top level accepts"):
        Config.from_file(CONF / "local.yaml", overrides=["foo.bar=1"])
    with pytest.raises(ConfigError, match=r"^--set: unknown key 'lake.rooot'"):
        Config.from_file(CONF / "local.yaml", overrides=["lake.rooot=1"])


def _numeric_keys() -> list[tuple[str, type]]:
    """Every int and float key of every section (found from the dataclasses, so a key added later is in)."""
    import dataclasses
    import typing

    out = []
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        tp = hints[section.name]
        if not dataclasses.is_dataclass(tp):
            continue
        for name, ftp in typing.get_type_hints(tp).items():
            if ftp in (int, float):
                out.append((f"{section.name}.{name}", ftp))
    return out


def test_every_numeric_key_has_a_range():
    """A value no setting can mean (-1 for any count, share, rate, size, seed or duration) is refused with an
    error naming the key, for every int and float key there is; floats also refuse NaN and infinity."""
    keys = _numeric_keys()
    assert len(keys) > 80 and ("train.learning_rate", float) in keys and ("spark.shuffle_partitions", int) in keys
    for key, tp in keys:
        escaped = re.escape(key)
        with pytest.raises(ConfigError, match=rf"{escaped}: must be"):
            Config.from_file(CONF / "local.yaml", overrides=[f"{key}=-1"])
        if tp is float:
            for bad in (".nan", ".inf"):
                with pytest.raises(ConfigError, match=rf"{escaped}: expected a finite number"):
                    Config.from_file(CONF / "local.yaml", overrides=[f"{key}={bad}"])


def test_lists_and_maps_of_numbers_are_checked_too():
    cases = {
        "features.windows_days=[]": r"features\.windows_days: must be a non-empty list",
        "features.windows_days=[7, 0]": r"features\.windows_days: must be a non-empty list of days >= 1",
        "train.hidden_units=[64, -3]": r"train\.hidden_units: must be a list of integers >= 1",
        "cleanse.fx_to_eur={EUR: 1.0, GBP: 0}": r"cleanse\.fx_to_eur: every rate must be > 0; \['GBP'\]",
        "cleanse.fx_to_eur={EUR: 1.0, GBP: .nan}": r"cleanse\.fx_to_eur\.GBP: expected a finite number",
        "allocation.budget={amount: -5}": r"allocation\.budget\.amount: must be >= 0",
        "shop.latent_weights=[1, 1, 1, -1]": r"shop\.latent_weights: expected 4 shares >= 0",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            Config.from_file(CONF / "local.yaml", overrides=[override])
    # the shipped environments pass
    for env in sorted(CONF.glob("*.yaml")):
        Config.from_file(env)
