"""train.tensorboard: the event files hold exactly what metrics.jsonl holds, plus the lrs and the hparams."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import make_image_folder

from cnnkit.config import load_config
from cnnkit.training.fit import fit
from cnnkit.training.tensorboard import SCALARS

pytest.importorskip("tensorboard", reason="tensorboard not installed: pip install 'cnnkit[tensorboard]'")


def test_event_files_match_metrics_jsonl(tmp_path: Path, one_torch_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    root = make_image_folder(tmp_path / "data", n_train_per_class=4, n_test_per_class=2)
    config = tmp_path / "tb.yaml"
    config.write_text(textwrap.dedent(f"""\
        model: {{name: lenet}}
        data: {{root: {root}, val_split: 10}}
        optim: {{name: adamw, lr: 0.003}}
        schedule: {{name: onecycle}}
        train: {{epochs: 3, batch_size: 8, threads: 1, tensorboard: true, test_every_epoch: true, tta: flip}}
        output: {{dir: {tmp_path / 'runs'}}}
        """))
    result = fit(load_config(config), run_name="tb")
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(result.run_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    compared = 0
    for key, tag in SCALARS.items():
        if key not in rows[0]:
            assert tag not in tags
            continue
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [step for step, _ in logged] == [r["epoch"] for r in rows], tag
        # Event files store float32: equal to the row's float64 to float32 precision.
        assert [v for _, v in logged] == pytest.approx([r[key] for r in rows], rel=1e-6), tag
        compared += 1
    assert compared >= 8  # train/val/test loss and accuracy, img/s, epoch time
    lrs = [(e.step, e.value) for e in events.Scalars("lr/adamw")]
    assert [v for _, v in lrs] == pytest.approx([r["lr"] for r in rows], rel=1e-6)
    # The hparams: the config as flat keys, and the final metrics the run printed.
    assert [e.value for e in events.Scalars("hparam/test_acc")] == pytest.approx([result.test.accuracy])
    assert [e.value for e in events.Scalars("hparam/tta_acc")] == pytest.approx([result.tta.accuracy])
    assert [e.value for e in events.Scalars("hparam/best_val_acc")] == pytest.approx([max(r["val_acc"] for r in rows)])
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["optim.name"].string_value == "adamw" and hparams["train.epochs"].number_value == 3
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert {m.name.tag for m in experiment.experiment.metric_infos} == {
        "hparam/test_acc", "hparam/tta_acc", "hparam/best_val_acc"}


def test_without_the_switch_no_event_file_is_written(tmp_path: Path, one_torch_thread):
    root = make_image_folder(tmp_path / "data", n_train_per_class=2, n_test_per_class=1)
    config = load_config(None, [f"data.root={root}", "data.val_split=0", "train.epochs=1", "train.threads=1",
                                f"output.dir={tmp_path / 'runs'}"])
    result = fit(config, run_name="plain")
    assert not list(result.run_dir.glob("events.out.tfevents.*"))
