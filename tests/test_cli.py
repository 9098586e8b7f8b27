import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from hptransfer.cli import main
from hptransfer.config import ConfigError

TINY = "src/hptransfer/recipes/tiny.toml"

BAD = [
    (["train", TINY, "--set", "model.widht=64"], "unknown config key"),
    (["train", TINY, "--set", "optimizer.lr=fast"], "expected a number"),
    (["train", TINY, "--set", "model.width=70"], "not divisible"),
    (["train", TINY, "--set", "data.path=/no/such/file.txt"], "no such file"),
    (["train", TINY, "--set", "param.name=mupp"], "param.name"),
    (["train", TINY, "--set", "optimizer.name=adamax"], "optimizer.name"),
    (["train", "no_such_recipe.toml"], "no such recipe"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_bad_input_via_the_console_script(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hptransfer",
            "train",
            TINY,
            "--set",
            "model.widht=3",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def rule_refusal(argv: list[str], capsys) -> str:
    """The message with which `hptransfer rules` refuses ``argv``.

    make_rule (param/rules.py) raises plain ValueError for some bad optimizer options; the
    registry branch turns those into ConfigError. Until then the error propagates like a bug's
    (not caught by the boundary), and the message is read from the exception instead.
    """
    try:
        code = main(argv)
    except ValueError as e:
        assert not isinstance(e, ConfigError)  # a ConfigError would have been caught
        return str(e)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    return err


def test_help_does_not_import_torch():
    code = (
        "import sys; from hptransfer.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "assert 'torch' not in sys.modules and 'pandas' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_rules_json(capsys):
    assert (
        main(
            [
                "rules",
                "--param",
                "mup",
                "--optimizer",
                "adam",
                "--alignment",
                "full",
                "--format",
                "json",
            ]
        )
        == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert (d["parameterization"], d["optimizer"], d["alignment"]) == ("mup", "adam", "full")
    assert {k: d["roles"][k]["c"] for k in ("input", "hidden", "output")} == {
        "input": 0.5,
        "hidden": 1.0,
        "output": 0.5,
    }
    assert d["roles"]["output"]["a"] == 0.5 and d["roles"]["output"]["b"] == 0.5
    assert d["block_size"] is None


def test_rules_shampoo_prints_its_block_factor(capsys):
    assert main(["rules", "--param", "mup", "--optimizer", "shampoo", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["block_size"] == 128
    assert main(["rules", "--param", "mup", "--optimizer", "shampoo"]) == 0
    assert "blocks of at most 128" in capsys.readouterr().out
    model = ["--model", "nanodo", "--width", "256", "--base-width", "64", "--depth", "1"]
    assert (
        main(["rules", "--optimizer", "shampoo", *model, "--option", "max_preconditioner_dim=64"])
        == 0
    )
    q = next(line for line in capsys.readouterr().out.splitlines() if "attn.q.weight" in line)
    assert q.split()[6] == "0.25"  # 4 x 4 blocks of 64 at width 256, 1 at 64: sqrt(1/16)
    assert main(["rules", "--optimizer", "shampoo", "--option", "grafting=adam"]) == 0
    assert "rule adam" in capsys.readouterr().out  # grafted: the AdamW rules
    assert main(["rules", "--optimizer", "shampoo", "--option", "max_preconditioner_dim"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["rules", "--optimizer", "shampoo", "--option", "block=32"]) == 2
    assert "no such knob" in capsys.readouterr().err
    for bad in ("0", "32.5", "abc"):  # the rule's block factor needs a whole block size
        argv = ["rules", "--optimizer", "shampoo", "--option", f"max_preconditioner_dim={bad}"]
        assert "must be an integer >= 1" in rule_refusal(argv, capsys)
    assert main(["rules", "--optimizer", "lamb", "--option", "clamp=false"]) == 0
    assert "rule adam_ps" in capsys.readouterr().out  # unclamped LAMB: Adam + parameter scaling


def test_rules_warns_where_lambs_clamp_does_not_bind_at_init(capsys):
    # nanodo at width 32: 10 of 12 hidden matrices (norm ~ sqrt(32)) and the 5 norm gains
    # (norm sqrt(32)) are below the clamp 10; embeddings and readout are above it
    model = ["--model", "nanodo", "--base-width", "16", "--depth", "2", "--head-dim", "8"]
    assert main(["rules", "--optimizer", "lamb", *model, "--width", "32"]) == 0
    warning = capsys.readouterr().out.splitlines()[-1]
    assert warning.startswith("warning: LAMB's clamp 10 does not bind at init for 15 of 20 ")
    assert "blocks.0.ln1.weight 5.66" in warning and "--option clamp=X" in warning
    # at width 256 every tensor is above it; a clamp of 2 binds at 32 too; no clamp, no rule
    assert main(["rules", "--optimizer", "lamb", *model, "--width", "256"]) == 0
    assert "warning" not in capsys.readouterr().out
    for option in ("clamp=2", "clamp=false"):
        assert main(["rules", "--optimizer", "lamb", *model, "--width", "32", "--option",
                     option]) == 0  # fmt: skip
        assert "warning" not in capsys.readouterr().out


def test_rules_per_parameter_table(capsys):
    assert (
        main(
            ["rules", "--param", "mup", "--model", "nanodo", "--width", "256", "--base-width", "64"]
        )
        == 0
    )
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("head.weight"))
    # output role, fan_in 256, init std 1/16, multiplier 1/2, LR factor 4^-1/2
    assert head.split()[1:8] == ["output", "256", "256", "0.0625", "0.5", "0.5", "1e-08"]
    assert head.split()[8:] == ["linear", "in=dim1", "out=dim0"]  # the evidence of its role


def test_train_writes_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                TINY,
                "--set",
                "train.steps=5",
                "--set",
                "train.eval_every=5",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "ok" and s["steps"] == 5


def test_coord_check_command(tmp_path, capsys):
    assert (
        main(
            [
                "coord-check",
                "--widths",
                "32,64",
                "--steps",
                "2",
                "--set",
                "model.depth=1",
                "--set",
                "model.head_dim=16",
                "--set",
                "train.batch_size=2",
                "--set",
                "train.seq_len=16",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "coord.png").stat().st_size > 1000
    assert "head" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# the boundary: bad input is one line and exit 2 with nothing written; a bug keeps its traceback

SPEC = """
[base]
model.name = "mlp"
model.width = 32
model.depth = 1
param.base_width = 32
train.steps = 2
[grid]
{grid}
[sweep]
{sweep}
"""


def spec_file(tmp_path, grid: str = "lr = [0.01]", sweep: str = "") -> str:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(grid=grid, sweep=sweep))
    return str(path)


TRAIN = ["train", TINY, "--set"]
BATTERY = {
    # a value out of range or not finite, named by its key
    "seed=-1": ([*TRAIN, "seed=-1"], "seed"),
    "lr=inf": ([*TRAIN, "optimizer.lr=inf"], "optimizer.lr"),
    "lr=nan": ([*TRAIN, "optimizer.lr=nan"], "optimizer.lr"),
    "eps=nan": ([*TRAIN, "optimizer.eps=nan"], "optimizer.eps"),
    "eps=inf": ([*TRAIN, "optimizer.eps=inf"], "optimizer.eps"),
    "wd<0": ([*TRAIN, "optimizer.weight_decay=-0.1"], "optimizer.weight_decay"),
    "clip<0": ([*TRAIN, "train.grad_clip=-1.0"], "train.grad_clip"),
    "final_lr_frac<0": ([*TRAIN, "train.final_lr_frac=-0.5"], "train.final_lr_frac"),
    "gamma<0": ([*TRAIN, "param.gamma_hidden=-1.0"], "param.gamma_hidden"),
    "diverge=nan": ([*TRAIN, "train.diverge_factor=nan"], "train.diverge_factor"),
    "diverge<0": ([*TRAIN, "train.diverge_factor=-3.0"], "train.diverge_factor"),
    "betas=1": ([*TRAIN, "optimizer.betas=[0.9, 1.0]"], "optimizer.betas"),
    "init<0": ([*TRAIN, "param.init_output=-1.0"], "param.init_output"),
    "width<0": ([*TRAIN, "model.width=-64"], "model.width"),
    "no =": ([*TRAIN, "model.width"], "--set"),
    "recipe key": (["train", "{tmp}/bad.toml"], "optimizer.lr"),
    # sweep specs: checked whole before any run directory appears
    "grid lr inf": (["sweep", "{spec:lr = [inf]}"], "optimizer.lr"),
    "grid lr -1": (["sweep", "{spec:lr = [0.01, -1.0]}"], "optimizer.lr"),
    "range inf": (["sweep", '{spec:lr = {min = 1e-3, max = inf, step = "2^1"}}'], "max"),
    "tpp inf": (["sweep", "{spec:;tokens_per_param = inf}"], "sweep.tokens_per_param"),
    "lock nan": (["sweep", "{spec:;lock_timeout_s = nan}"], "sweep.lock_timeout_s"),
    "lock tiny": (["sweep", "{spec:;lock_timeout_s = 0.05}"], "sweep.lock_timeout_s"),
    "executor": (["sweep", '{spec:;executor = "slurm"}'], "sweep.executor"),
    "no spec": (["sweep", "{tmp}/nope.toml"], "nope.toml"),
    # rules: settings checked as a config would check them
    "k-switches": (["rules", "--k-switches", "12"], "param.k_switches"),
    "model no width": (["rules", "--model", "mlp"], "--width"),
    # usage errors from argparse: one line too, naming the command or option
    "no command": ([], "name a command"),
    "unknown command": (["trian"], "invalid choice"),
    "missing recipe": (["train"], "recipe"),
    "bad choice": (["rules", "--param", "mupp"], "--param"),
    "not an int": (["coord-check", "--steps", "six"], "--steps"),
    "unknown option": (["ls", "--all", "x"], "--all"),
}


def expand(argv: list[str], tmp_path) -> list[str]:
    out = []
    for a in argv:
        if a.startswith("{spec:"):
            grid, _, sweep = a[len("{spec:") : -1].partition(";")
            a = spec_file(tmp_path, grid or "lr = [0.01]", sweep)
        out.append(a.replace("{tmp}", str(tmp_path)))
    return out


@pytest.mark.parametrize("argv,names", BATTERY.values(), ids=BATTERY.keys())
def test_bad_input_battery(argv, names, tmp_path, capsys, monkeypatch):
    (tmp_path / "bad.toml").write_text("[optimizer]\nlr = -1.0\n")
    monkeypatch.chdir(tmp_path)  # a default output directory would appear here
    argv = expand(argv, tmp_path)
    if argv[:1] in (["train"], ["sweep"]) and len(argv) > 1:
        argv += ["--out", str(tmp_path / "out")]
    root = Path(__file__).parents[1]
    argv = [str(root / a) if a == TINY else a for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("hptransfer") and names in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """Only ConfigError is bad input: any other ValueError (numpy's, torch's, ours) is a bug."""
    import hptransfer.sweep.ls

    def broken(root):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(hptransfer.sweep.ls, "status_text", broken)
    with pytest.raises(ValueError, match="a bug, not bad input"):
        main(["ls", str(tmp_path)])
    code = (
        "import sys, hptransfer.sweep.ls as ls\n"
        "def broken(root): raise ValueError('a bug, not bad input')\n"
        "ls.status_text = broken\n"
        "from hptransfer.cli import main\n"
        "sys.exit(main(['ls', '.']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" in r.stderr
    assert r.stderr.rstrip().endswith("ValueError: a bug, not bad input")


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"hptransfer {version('hptransfer')}\n"


def test_no_argparse_outside_the_cli():
    src = Path(__file__).parents[1] / "src" / "hptransfer"
    users = [
        p.relative_to(src).as_posix()
        for p in src.rglob("*.py")
        if "argparse" in p.read_text() and p.parent.name != "cli"
    ]
    assert users == []


@pytest.mark.parametrize("where", ["a_file", "a_file/below"])
def test_train_out_that_cannot_be_a_directory_is_one_line(where, tmp_path, capsys):
    """--out naming an existing file (or a path under one): one line naming it, exit 2."""
    (tmp_path / "a_file").write_text("mine")
    out = tmp_path / where
    assert main(["train", str(Path(__file__).parents[1] / TINY), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "Traceback" not in err, err
    assert (tmp_path / "a_file").read_text() == "mine"
