"""The user's own model in every command: model.factory (and its loss / batch hooks), the
coord_check Python API, and param groups re-made for another base LR."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from hptransfer import coord_check
from hptransfer.assemble import build, loss_fn, model_factory
from hptransfer.cli import main
from hptransfer.config import ConfigError, RunConfig
from hptransfer.train import train

USER = Path(__file__).parent / "data" / "user_model.py"  # a file of the tests, not the package
LM = f"{USER}:make_lm"
TINY = {
    "model.factory": LM,
    "model.width": 32,
    "model.depth": 1,
    "param.base_width": 16,
    "train.steps": 3,
    "train.batch_size": 4,
    "train.seq_len": 16,
    "train.eval_every": 3,
    "train.eval_batches": 1,
}


def user_module():
    """tests/data/user_model.py as imported by model.factory's path form."""
    from hptransfer.config import load_callable

    return sys.modules[load_callable(LM, "model.factory").__module__]


def test_sweep_runs_a_model_from_the_tests_own_file(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    base = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY.items() if k != "model.width")
    spec.write_text(f"[base]\n{base}\n\n[grid]\nmodel.width = [16, 32]\nlr = [0.01]\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "2 ok" in capsys.readouterr().out
    configs = [json.loads(p.read_text()) for p in tmp_path.glob("out/runs/*/config.json")]
    assert [c["model"]["factory"] for c in configs] == [LM, LM]
    summaries = [json.loads(p.read_text()) for p in tmp_path.glob("out/runs/*/summary.json")]
    # the user's model, not nanodo: an embedding, one block of two linears, a norm, a head
    widths = sorted(c["model"]["width"] for c in configs)
    assert sorted(s["n_params"] for s in summaries) == [
        256 * w + (w * 2 * w + 2 * w) + (2 * w * w + w) + 2 * w + w * 256 for w in widths
    ]


def test_coord_check_command_runs_a_model_from_the_tests_own_file(tmp_path, capsys):
    sets = [f"{k}={v}" for k, v in TINY.items() if k.startswith(("model.f", "train.b", "train.s"))]
    argv = ["coord-check", "--widths", "16,32", "--steps", "2", "--out", str(tmp_path)]
    assert main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    df = pd.read_csv(tmp_path / "coord.csv")  # model.depth = 2, the default: two blocks
    assert set(df.layer) == {
        "embed",
        "blocks.0.0",
        "blocks.0.2",
        "blocks.1.0",
        "blocks.1.2",
        "norm",
        "head",
    }
    assert set(df.width) == {16, 32} and (tmp_path / "coord.png").exists()


def test_rules_prints_the_table_of_a_factory_model(capsys):
    assert main(["rules", "--model", LM, "--width", "64", "--base-width", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    rows = {line.split()[0]: line.split()[1] for line in lines}
    assert rows["embed.weight"] == "input" and rows["head.weight"] == "output"
    assert rows["blocks.1.2.weight"] == "hidden" and rows["norm.weight"] == "vector"
    # what is printed is what runs: a factory model's run uses the model anchor (its own init)
    run = {**TINY, "model.width": 64, "model.depth": 2, "param.base_width": 32}
    table = build(RunConfig().replace(**run))
    spec = table.parameterization.table["blocks.1.2.weight"]
    assert spec.init_std is None and spec.init_gain is not None
    printed = next(line for line in lines if line.startswith("blocks.1.2.weight "))
    assert f"own x {spec.init_gain:.4g}" in printed, printed


BAD_FACTORIES = [
    ("mymodel", "expected 'package.module:function'"),
    ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
    (f"{USER}:make_nothing", "has no attribute 'make_nothing'"),
    (f"{USER}:NOT_CALLABLE", "is not callable"),
    ("/no/such/dir/model.py:make", "no such file"),
    ("BROKEN:make", "cannot import"),  # a file that raises when imported
]


@pytest.mark.parametrize(
    "command,factory,message",
    [
        (command, factory, message)
        for command in ("train", "sweep", "coord-check", "rules")
        for factory, message in BAD_FACTORIES
        if command != "rules" or ":" in factory  # rules --model NAME: a built-in model's name
    ],
)
def test_a_bad_factory_is_one_line_exit_2_and_writes_nothing(
    command, factory, message, tmp_path, capsys
):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    factory = factory.replace("BROKEN", str(broken))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"[model]\nfactory = {json.dumps(factory)}\n")
    out = tmp_path / "out"
    argv = {
        "train": ["train", str(recipe), "--out", str(out)],
        "sweep": ["sweep", str(recipe), "--out", str(out)],
        "coord-check": ["coord-check", str(recipe), "--out", str(out)],
        "rules": ["rules", "--model", factory, "--width", "64", "--base-width", "32"],
    }[command]
    if command == "sweep":
        recipe.write_text(f"[base]\nmodel.factory = {json.dumps(factory)}\n[grid]\nlr = [0.01]\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.factory" in err and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_factory_that_returns_no_module_is_refused_before_the_run_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--set", "model.factory=builtins:str", "--out", str(out)]
    recipe = tmp_path / "r.toml"
    recipe.write_text("")
    assert main([argv[0], str(recipe), *argv[1:]]) == 2
    assert "returned a str, not a torch.nn.Module" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "keys,message",
    [
        ({"model.factory": LM, "model.name": "llama"}, "unset model.name"),
        ({"model.factory": LM, "model.kv_group": 2}, "built-in models"),
        ({"model.loss": f"{USER}:mse"}, "model.loss applies with model.factory only"),
        ({"model.factory": LM, "param.name": "sp", "param.k_switches": "0100"}, "k_switches"),
    ],
)
def test_settings_that_do_not_fit_a_factory_are_refused(keys, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig().replace(**keys)


def test_the_factory_string_enters_the_run_id_and_default_ids_stay():
    cfg = RunConfig().replace(**{"model.width": 256, "optimizer.lr": 0.00390625})
    assert cfg.run_id() == "b8906602fbfb"  # pinned in test_run_id: unchanged by the new fields
    ids = {cfg.replace(**{"model.factory": f}).run_id() for f in (LM, f"{USER}:make_regressor")}
    assert len(ids) == 2 and cfg.run_id() not in ids


def test_the_factory_gets_depth_and_the_corpus_vocabulary():
    cfg = RunConfig().replace(**{**TINY, "model.depth": 3, "data.vocab_size": 300}).validate()
    model = model_factory(cfg)(cfg.model.width)
    assert len(model.blocks) == 3 and model.embed.num_embeddings == 300
    only_width = RunConfig().replace(**{"model.factory": f"{USER}:make_regressor"})
    assert model_factory(only_width)(8)[0].out_features == 8  # width alone when that is all


def test_the_default_loss_reads_logits_and_refuses_what_is_not_a_causal_lm():
    class Wrapped(nn.Module):  # a transformers-style output object
        def __init__(self) -> None:
            super().__init__()
            self.lm = user_module().make_lm(8)

        def forward(self, x):
            return type("Out", (), {"logits": self.lm(x)})()

    x = torch.randint(0, 256, (2, 5))
    wrapped = Wrapped()
    assert loss_fn(wrapped, x, x, False) == loss_fn(wrapped.lm, x, x, False)
    with pytest.raises(ConfigError, match="needs model.loss"):
        loss_fn(lambda x: x.float().sum(1), x, x, False)  # (B,) instead of (B, T, V)


def test_loss_and_batch_hooks_train_a_model_that_is_not_a_language_model(tmp_path):
    hooks = {k: f"{USER}:{f}" for k, f in [("loss", "mse"), ("batch", "regression_batch")]}
    cfg = RunConfig().replace(
        **{
            **TINY,
            "model.factory": f"{USER}:make_regressor",
            "model.loss": hooks["loss"],
            "model.batch": hooks["batch"],
            "train.steps": 6,
            "train.eval_every": 6,
            "optimizer.lr": 3e-3,
        }
    )
    s = train(cfg.validate(), tmp_path / "run")
    assert s["status"] == "ok" and s["steps"] == 6
    assert s["losses"][-1] < s["losses"][0] and math.isfinite(s["final_eval_loss"])
    m = user_module()
    x, y = m.regression_batch(0, batch_size=4, seed=0, split="eval")
    built = build(cfg)
    assert built.eval_set[0][0].equal(x) and built.eval_set[0][1].equal(y)


def test_coord_check_python_api_on_a_custom_mlp():
    m = user_module()
    batch = m.regression_batch(0, batch_size=64, seed=0, split="train")
    kw = dict(widths=[64, 512], steps=4, lr=0.01)
    mup = coord_check(m.make_regressor, batch, m.mse, param="mup", **kw)
    assert list(mup.rms.columns) == ["layer", "width", "step", "rms", "seed"]
    table = mup.at(3)  # layer, the RMS at each width, the slope
    assert list(table.columns) == ["layer", 64, 512, "slope"]
    assert list(table.layer) == ["0", "2", "4"]
    assert table.slope.abs().max() < 0.2, table
    sp = coord_check(m.make_regressor, batch, m.mse, param="sp", lr_exponents="global", **kw)
    assert sp.at(3).slope.max() > 0.5, sp.at(3)  # one LR for every width: updates grow


def test_regroup_makes_groups_for_another_lr_without_touching_the_model():
    cfg = RunConfig().replace(**TINY).validate()
    s = build(cfg)
    before = [dict(g) for g in s.parameterization.param_groups]
    x = s.batches.get(0)[0]
    out = s.model(x).detach()
    handles = list(s.parameterization.handles)
    groups = s.parameterization.regroup(2 * cfg.optimizer.lr)
    assert [g["lr"] for g in groups] == [2 * g["lr"] for g in before]
    for g, b in zip(groups, before):
        assert [id(p) for p in g["params"]] == [id(p) for p in b["params"]]
        assert {k: v for k, v in g.items() if k not in ("lr", "params")} == {
            k: v for k, v in b.items() if k not in ("lr", "params")
        }
    assert [g["lr"] for g in s.parameterization.param_groups] == [g["lr"] for g in before]
    assert s.parameterization.handles == handles and s.model(x).equal(out)
    torch.optim.Adam(groups).step()  # a torch optimizer takes them as they are
    with pytest.raises(ConfigError, match="regroup"):
        s.parameterization.regroup(0.0)


def test_a_factory_model_keeps_its_own_init_by_default():
    """param.anchor = auto is the model anchor for model.factory's model: at base width the run
    starts from the model itself, bit for bit; at 4x width its dense 16-feature first layer
    keeps the model's own init size (the relative anchor would give it std 1)."""
    base = {"model.factory": f"{USER}:make_regressor", "param.base_width": 32}
    hooks = {"model.loss": f"{USER}:mse", "model.batch": f"{USER}:regression_batch"}
    cfg = RunConfig().replace(**{**TINY, **base, **hooks, "model.width": 32})
    assert cfg.param.anchor == "auto"
    setup = build(cfg)
    torch.manual_seed(cfg.seed)
    own = user_module().make_regressor(32)
    for (name, p), q in zip(setup.model.named_parameters(), own.parameters()):
        assert torch.equal(p, q), name

    def effective_rms(setup) -> float:  # the first layer's init times its forward multiplier
        mult = setup.parameterization.table["0.weight"].multiplier
        return mult * setup.model[0].weight.pow(2).mean().sqrt().item()

    wide = build(cfg.replace(**{"model.width": 128}))
    assert effective_rms(wide) == pytest.approx(16**-0.5 / 3**0.5, rel=0.1)  # U(+-16^-1/2)
    relative = build(cfg.replace(**{"model.width": 128, "param.anchor": "relative"}))
    assert effective_rms(relative) == pytest.approx(1.0, rel=0.1)
