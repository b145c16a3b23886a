"""Fuzzing the loaders: whatever a user hands cnnkit, it loads or raises cnnkit's own error type.

Random YAML documents (structured ones built around the real section and key names, so they get
past the first check, and raw text) and random `--set` strings go to the config loader; random
bytes, truncations and bit flips of a real checkpoint go to the checkpoint loader. Anything other
than a result or a `CnnkitError` subclass is a bug: the CLI would show a traceback.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnkit.config import Config, load_config
from cnnkit.errors import CnnkitError, ConfigError
from cnnkit.models import build_model
from cnnkit.training.checkpoint import load_checkpoint, save_checkpoint

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

SECTIONS = {name: list(field.annotation.model_fields) for name, field in Config.model_fields.items()}
KEYS = sorted({k for keys in SECTIONS.values() for k in keys} | set(SECTIONS))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["lenet", "bn_cnn", "edge", "adam", "sgd", "cosine", "cpu", "cuda", "auto", "fp16", "1e-3",
                     "0", "-1", "[3, 32]", "{}", "~", "yes", "3x32x32"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.none(),
                 st.floats(allow_nan=False))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=20,
)
# Mostly-valid shapes: {section: {key: value}} with real names, so validation gets deep.
sectioned = st.dictionaries(
    st.sampled_from(list(SECTIONS)),
    st.one_of(documents, st.dictionaries(st.sampled_from(KEYS), documents, max_size=4)),
    max_size=4,
)
yaml_snippets = st.sampled_from([
    "&a [*a]", "&a {x: *a}", "!!python/object/apply:os.system ['true']", "!!binary aGVsbG8=", "!!binary /w==",
    "2001-12-14", "{2001-12-14: 1}", "? [a, b]\n: 1", "? {a: 1}\n: 1", "{a: 1, a: 2}", "!!set {a, b}",
    "!!omap [a: 1]", "1e999", ".nan", "-.inf", "'\\x00'", "\t", "%YAML 1.1\n---\n{}", "--- a\n--- b",
    "\ufeffmodel: {}", "*undefined", "model: !!str", "model:\n  kwargs: &k {a: *k}", "train: {epochs: 0x10}",
    "train: {epochs: 1_000}", "data: {mean: [1, 2]}", "[" * 100 + "]" * 100,
    "a: &a [1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d]\nmodel: {kwargs: {x: *e}}",
])
# Eight aliases per level, seven levels: 8**7 ≈ 2 million values from a few hundred bytes.
ALIAS_BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 8)}]\n" for i in range(1, 8)).replace(
    "l1: &l1 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]", "l1: &l1 [1, 1, 1, 1, 1, 1, 1, 1]")


@pytest.mark.parametrize(("text", "fragment"), [
    ("model:\n  kwargs: &k {a: *k}\n", "model.kwargs.a contains itself"),
    ("model:\n  kwargs: {x: &l [1, *l]}\n", "model.kwargs.x.1 contains itself"),
    (ALIAS_BOMB, "expands to more than 100,000 values"),
    ("model:\n  kwargs: {blob: !!binary /w==}\n", "model.kwargs.blob: a YAML bytes value"),
    ("model:\n  kwargs: {when: 2001-12-14}\n", "model.kwargs.when: a YAML date value"),
    ("[" * 3000, "nested too deeply"),
    ("train:\n  epochs: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 levels"),
    ("!!python/object/apply:os.system ['true']\n", "malformed YAML"),
])
def test_yaml_tricks_are_one_line_config_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "tricky.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and fragment in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def _check_config(call) -> None:
    try:
        config = call()
    except CnnkitError:
        return
    assert isinstance(config, Config)
    config.to_yaml()  # `cnnkit config show` prints it: that must work too


@FUZZ
@given(doc=st.one_of(documents, sectioned))
def test_random_yaml_documents(doc) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        _check_config(lambda: load_config(path))


@FUZZ
@given(text=st.one_of(st.text(max_size=80), yaml_snippets,
                      st.builds(lambda s, t: f"{s}:\n  {t}", st.sampled_from(list(SECTIONS)), yaml_snippets)))
def test_random_yaml_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(text.encode("utf-8"))
        _check_config(lambda: load_config(path))


dotted_keys = st.lists(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), min_size=1, max_size=4).map(".".join)
set_values = st.one_of(st.text(max_size=20), yaml_snippets, scalars.map(str))
set_strings = st.one_of(
    st.text(max_size=40),
    st.builds(lambda k, v: f"{k}={v}", dotted_keys, set_values),
)


@FUZZ
@given(overrides=st.lists(set_strings, max_size=4))
def test_random_set_strings(overrides: list[str]) -> None:
    _check_config(lambda: load_config(None, overrides))


# ---------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    """A real (untrained) lenet checkpoint, as save_checkpoint writes it."""
    torch.manual_seed(0)
    model = build_model("lenet")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": {},
               "epoch": 1, "config": Config().to_dict(), "classes": [str(i) for i in range(10)], "metrics": [],
               "best": {"score": 0.5, "epoch": 1}, "rng": {"torch": torch.get_rng_state()}, "task": "classify"}
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(Path(tmp) / "c.pt", payload)
        return path.read_bytes()


def _check_checkpoint(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.pt"
        path.write_bytes(blob)
        try:
            payload = load_checkpoint(path)
        except CnnkitError:
            return
        assert isinstance(payload, dict) and "model" in payload


@FUZZ
@given(blob=st.one_of(st.binary(max_size=2048),
                      st.builds(lambda magic, rest: magic + rest, st.sampled_from([b"PK\x03\x04", b"\x80\x02",
                                                                                   b"\x80\x04", b"\x80"]),
                                st.binary(max_size=1024))))
def test_random_bytes_as_checkpoint(blob: bytes) -> None:
    _check_checkpoint(blob)


@FUZZ
@given(data=st.data())
def test_damaged_real_checkpoint(checkpoint_bytes: bytes, data) -> None:
    blob = bytearray(checkpoint_bytes)
    how = data.draw(st.sampled_from(["truncate", "flip", "overwrite", "splice"]))
    if how == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "overwrite":
        i = data.draw(st.integers(0, len(blob) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=64))
        blob[i: i + len(chunk)] = chunk
    else:
        i, j = sorted(data.draw(st.lists(st.integers(0, len(blob)), min_size=2, max_size=2)))
        blob = blob[:i] + blob[j:]
    _check_checkpoint(bytes(blob))


@FUZZ
@given(obj=documents)
def test_random_plain_payloads(obj) -> None:
    # Well-formed torch files holding arbitrary plain data, with or without the checkpoint keys.
    for payload in (obj, {"format_version": 1, "model": obj, "config": obj}, {"format_version": 1,
                                                                              "model": {}, "config": {}, "x": obj}):
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        _check_checkpoint(buffer.getvalue())
