import json
import subprocess
import sys

import pytest

from hptransfer.cli import main

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
        assert (
            main(["rules", "--optimizer", "shampoo", "--option", f"max_preconditioner_dim={bad}"])
            == 2
        )
        assert "must be an integer >= 1" in capsys.readouterr().err
    assert main(["rules", "--optimizer", "lamb", "--option", "clamp=false"]) == 0
    assert "rule adam_ps" in capsys.readouterr().out  # unclamped LAMB: Adam + parameter scaling


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
