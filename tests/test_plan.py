"""predict --export: the plan of the target model matches `hptransfer rules --model` x the
predicted base LR (with the tuned per-role constants), apply() installs it, and the recipe
trains the target size."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_report import write_run

from hptransfer.assemble import model_factory
from hptransfer.cli import main
from hptransfer.config import ConfigError, RunConfig, load_recipe
from hptransfer.plan import load_plan

WIDTHS = (32, 64, 128)
TARGET = 256
LR0 = 2.0**-7
GAMMA_OUTPUT = 0.5
BASE = {
    "model.depth": 1,
    "model.head_dim": 16,
    "param.base_width": 32,
    "param.gamma_output": GAMMA_OUTPUT,
}


def write_sweep(root: Path, widths: tuple[int, ...] = WIDTHS, status: str = "ok") -> Path:
    """muP + Adam, an optimum that stays at LR0, two seeds; full configs as the store writes."""
    base = RunConfig().replace(**BASE)
    for width in widths:
        for k in range(-12, -2):
            lr = 2.0**k
            for seed in (0, 1):
                cfg = base.replace(**{"model.width": width, "optimizer.lr": lr, "seed": seed})
                jitter = 0.002 * math.sin(7 * k + 3 * seed + width)
                loss = 3 + 2 * width**-0.5 + 0.05 * math.log(lr / LR0) ** 2 + jitter
                summary = {"status": status, "final_eval_loss": loss if status == "ok" else None}
                write_run(root, cfg.run_id(), cfg.to_dict(), summary)
    return root


def _json_out(argv: list[str]) -> dict:
    """Run the CLI; its stdout up to the last closing brace, as JSON."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(argv) == 0
    text = out.getvalue()
    return json.loads(text[: text.rindex("}") + 1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`predict --export plan.json --export recipe.toml` on the sweep, and its JSON output."""
    root = write_sweep(tmp_path_factory.mktemp("sweep"))
    out = tmp_path_factory.mktemp("out")
    result = _json_out(
        ["predict", str(root), "--width", str(TARGET), "--n-boot", "20", "--format", "json",
         "--export", str(out / "plan.json"), "--export", str(out / "recipe.toml")]
    )  # fmt: skip
    return {"root": root, "out": out, "result": result}


def test_plan_matches_rules_times_predicted_lr(exported: dict) -> None:
    (setting,) = exported["result"]["settings"]
    assert setting["rule"] == "keep"
    assert setting["lr_lo"] <= LR0 <= setting["lr_hi"]
    plan = load_plan(exported["out"] / "plan.json")
    assert plan.base_lr == pytest.approx(setting["lr"])
    assert plan.provenance["rule"] == "keep"
    assert plan.provenance["interval"] == pytest.approx([setting["lr_lo"], setting["lr_hi"]])

    rules = _json_out(
        ["rules", "--model", "nanodo", "--width", str(TARGET), "--base-width", "32",
         "--depth", "1", "--head-dim", "16", "--param", "mup", "--optimizer", "adam",
         "--format", "json"],
    )  # fmt: skip
    expected = {p["name"]: p for p in rules["params"]}
    model = model_factory(plan.config)(TARGET)
    groups = plan.apply(model, generator=torch.Generator().manual_seed(0))
    lr_of = {n: g["lr"] for g in groups for n in g["param_names"]}
    params = dict(model.named_parameters())
    assert set(lr_of) == set(expected)
    for name, want in expected.items():
        gamma = GAMMA_OUTPUT if want["role"] == "output" else 1.0
        assert lr_of[name] == pytest.approx(plan.base_lr * want["lr_factor"] * gamma), name
        if want["init_std"] is not None and params[name].numel() > 4000:
            assert params[name].std().item() == pytest.approx(want["init_std"], rel=0.05), name
    # the multipliers run: embedding output and head output are scaled
    mult = {n: p["multiplier"] for n, p in expected.items()}
    assert mult["tok_embed.weight"] != 1.0 and mult["head.weight"] != 1.0
    ids = torch.tensor([[1, 2, 3]])
    emb = model.tok_embed(ids)
    assert torch.allclose(emb, mult["tok_embed.weight"] * model.tok_embed.weight[ids])
    x = torch.randn(2, TARGET)
    head = model.head(x)
    assert torch.allclose(head, mult["head.weight"] * x @ model.head.weight.T, atol=1e-6)


def _doc_block(after: str) -> str:
    """The first python block of docs/predict.md after the line starting with ``after``."""
    text = (Path(__file__).parents[1] / "docs" / "predict.md").read_text()
    rest = text[text.index("\n" + after) :]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start : rest.index("```", start)]


def test_apply_without_init_keeps_the_values(exported: dict) -> None:
    plan = load_plan(exported["out"] / "plan.json")
    model = model_factory(plan.config)(TARGET)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = plan.apply(model, init=False)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(before)


def test_docs_plain_loop_trains_with_the_plan(
    exported: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/predict.md's own-loop block, run as it stands in the docs."""
    monkeypatch.chdir(exported["out"])
    x = torch.randint(0, 256, (2, 8))
    ns: dict = {
        "batches": [(x, x)] * 2,
        "loss_fn": lambda logits, y: F.cross_entropy(logits.flatten(0, 1), y.flatten()),
    }
    exec(_doc_block("In your own training loop"), ns)
    plan, model, opt = ns["plan"], ns["model"], ns["opt"]
    assert math.isfinite(ns["loss"].item())
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ns["groups"]]
    lr_of = {p["name"]: p["lr"] for p in plan.params}
    assert [g["lr"] for g in opt.param_groups] == [lr_of[g["param_names"][0]] for g in ns["groups"]]
    assert all(opt.state[p]["step"] == 2 for p in model.parameters())


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")  # CPU-only torch
def test_docs_hf_trainer_trains_with_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/predict.md's Trainer block, run as it stands: a width-32 GPT-2 from its config (no
    download) for 3 steps; the Trainer steps the plan's groups, in the plan's LR ratios."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from hptransfer.plan import make_plan

    cfg = RunConfig().replace(**{
        **BASE, "model.name": "hf_gpt2", "model.width": 32, "param.tied": "untie",
        "model.attn_scale": "linear", "train.seq_len": 16, "optimizer.lr": 2.0**-7,
    })  # fmt: skip
    make_plan(cfg).save(tmp_path / "plan.json")
    monkeypatch.chdir(tmp_path)
    ids = torch.randint(0, 256, (16,), generator=torch.Generator().manual_seed(0))
    ns: dict = {
        "steps": 3,
        "output_dir": str(tmp_path / "out"),
        "train_dataset": [{"input_ids": ids, "labels": ids}] * 8,
    }
    exec(_doc_block("With the Hugging Face `Trainer`"), ns)
    plan, model, opt, trainer = ns["plan"], ns["model"], ns["opt"], ns["trainer"]
    assert trainer.state.global_step == 3
    assert all(opt.state[p]["step"] == 3 for p in model.parameters())
    # one schedule factor for every group: the plan's per-parameter ratios hold
    lr_of = {p["name"]: p["lr"] for p in plan.params}
    ratios = [g["lr"] / lr_of[g["param_names"][0]] for g in opt.param_groups]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)
    assert len({lr_of[g["param_names"][0]] for g in opt.param_groups}) > 1
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_apply_refuses_a_model_of_another_width(exported: dict) -> None:
    plan = load_plan(exported["out"] / "plan.json")
    with pytest.raises(ConfigError, match="shape"):
        plan.apply(model_factory(plan.config)(128))


def test_apply_refuses_an_edited_plan(exported: dict, tmp_path: Path) -> None:
    data = json.loads((exported["out"] / "plan.json").read_text())
    data["params"][0]["lr"] *= 2
    (tmp_path / "plan.json").write_text(json.dumps(data))
    plan = load_plan(tmp_path / "plan.json")
    with pytest.raises(ConfigError, match="export it again"):
        plan.apply(model_factory(plan.config)(TARGET))


def test_recipe_is_the_target_run(exported: dict) -> None:
    plan = load_plan(exported["out"] / "plan.json")
    cfg = load_recipe(exported["out"] / "recipe.toml")
    assert cfg.model.width == TARGET
    assert cfg.optimizer.lr == plan.base_lr
    assert cfg.param.gamma_output == GAMMA_OUTPUT
    assert cfg == plan.config


def test_load_plan_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(ConfigError, match="not a plan"):
        load_plan(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_plan(tmp_path / "missing.json")
