"""Bad input on every command: one line ``nas: error: ...``, exit status 2, no traceback, nothing
written; Ctrl-C at any moment: one line, status 130. Run-specific cases live beside their
commands (test_search, test_train, test_lut_*, test_export)."""

import errno
import math
import os
import signal
import subprocess
import sys
import tempfile

import pytest

import nas.cli
from nas.cli import main
from nas.search import SearchConfig
from nas.train import TrainConfig
from supernets.errors import NasError
from supernets.fileio import unwritable_dir


def usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    return captured.err.strip()


@pytest.mark.parametrize("argv, command", [
    (["dance"], "nas"),
    (["search", "--budget"], "nas search"),
    (["train", "mobilenetv2", "--color", "red"], "nas train"),
    (["lut", "build", "--dtype", "int3"], "nas lut build"),
])
def test_usage_errors_have_the_prefix_of_every_other_error(argv, command, capsys):
    err = usage_error(capsys, argv)
    assert err.startswith("nas: error: ") and err.endswith(f"(see {command} --help)")


@pytest.mark.parametrize("argv, flag, value", [
    (["search", "--budget", "3ms", "--batch-size", "0"], "--batch-size", "0"),
    (["search", "--budget", "3ms", "--threads", "-1"], "--threads", "-1"),
    (["search", "--budget", "3ms", "--tau", "0"], "--tau", "0"),
    (["search", "--budget", "3ms", "--tau", "1"], "--tau", "1"),
    (["search", "--budget", "3ms", "--lam", "nan"], "--lam", "nan"),
    (["search", "--budget", "3ms", "--arch-lr", "nan"], "--arch-lr", "nan"),
    (["search", "--budget", "3ms", "--arch-lr", "0"], "--arch-lr", "0"),
    (["search", "--budget", "3ms", "--warmup-epochs", "-1"], "--warmup-epochs", "-1"),
    (["search", "--budget", "3ms", "--train-samples", "0"], "--train-samples", "0"),
    (["search", "--budget", "3ms", "--rank-samples", "-2"], "--rank-samples", "-2"),
    (["search", "--budget", "3ms", "--seed", "-1"], "--seed", "-1"),
    (["train", "mobilenetv2", "--lr", "nan"], "--lr", "nan"),
    (["train", "mobilenetv2", "--lr=-1e-3"], "--lr", "-1e-3"),
    (["train", "mobilenetv2", "--sigma", "0"], "--sigma", "0"),
    (["train", "mobilenetv2", "--sigma", "inf"], "--sigma", "inf"),
    (["train", "mobilenetv2", "--workers", "-1"], "--workers", "-1"),
    (["train", "mobilenetv2", "--seed", "x"], "--seed", "x"),
    (["eval", "best.pt", "--workers", "-1"], "--workers", "-1"),
])
def test_bad_numbers_are_refused_before_any_work(argv, flag, value, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*argv, "--out", str(out)] if argv[0] != "eval" else argv
    err = usage_error(capsys, argv)
    assert err.startswith(f"nas: error: argument {flag}: '{value}': expected ")
    assert not out.exists()


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "--batch-size 0: expected a positive integer"),
    ("threads", -1, "--threads -1: expected a positive integer"),
    ("tau", 1.0, "--tau 1: expected a positive, finite number other than 1"),
    ("tau", 0.0, "--tau 0: expected a positive, finite number other than 1"),
    ("lam", math.nan, "--lam nan: expected a finite number"),
    ("arch_lr", math.nan, "--arch-lr nan: expected a positive, finite number"),
    ("train_samples", 0, "--train-samples 0: expected a positive integer"),
    ("arch_split", 1.0, "--arch-split 1: expected a positive, finite number below 1"),
    ("budget_ms", math.inf, "budget_ms inf: expected a positive, finite number of milliseconds"),
])
def test_search_config_refuses_what_the_command_line_refuses(field, value, message):
    with pytest.raises(NasError) as info:
        SearchConfig(**{"budget_ms": 3.0, field: value})
    assert str(info.value) == message


@pytest.mark.parametrize("field, value, message", [
    ("sigma", 0.0, "--sigma 0: expected a positive, finite number"),
    ("sigma", -2.0, "--sigma -2: expected a positive, finite number"),
    ("lr", math.nan, "--lr nan: expected a positive, finite number"),
    ("batch_size", 0, "--batch-size 0: expected a positive integer"),
    ("seed", -1, "--seed -1: expected an integer, 0 or more"),
    ("weight_decay", -1e-4, "--weight-decay -0.0001: expected a finite number, 0 or more"),
])
def test_train_config_refuses_what_the_command_line_refuses(field, value, message):
    with pytest.raises(NasError) as info:
        TrainConfig(arch={}, **{field: value})
    assert str(info.value) == message


# -- Ctrl-C ----------------------------------------------------------------------------------------
def test_ctrl_c_while_the_commands_are_imported_is_one_line(capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(nas.cli, "build_parser", interrupted)
    assert main(["search", "--budget", "3ms"]) == 130
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "nas: interrupted\n"


def test_ctrl_c_during_the_torch_import_of_a_real_process(tmp_path):
    """SIGINT delivered while ``import torch`` runs inside ``main``, the first seconds of every
    command: one line and status 130, no traceback (from the process or at its exit)."""
    child = (
        "import builtins, os, signal, sys\n"
        "real_import = builtins.__import__\n"
        "def hook(name, *args, **kwargs):\n"
        "    if name == 'torch' and 'torch' not in sys.modules:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real_import(name, *args, **kwargs)\n"
        "builtins.__import__ = hook\n"
        "from nas.cli import main\n"
        "sys.exit(main(['flops', 'mobilenetv2']))\n")
    # a job started in the background by a non-interactive shell (CI scripts, nohup ... &)
    # inherits SIGINT ignored, and Python then never installs its handler: give the child the
    # default disposition, as a terminal would
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, check=False,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "nas: interrupted\n")


# -- output folders ----------------------------------------------------------------------------
def test_unwritable_dir_tries_for_real_and_leaves_nothing(tmp_path, monkeypatch):
    assert unwritable_dir(tmp_path / "a" / "b" / "c") is None
    assert list(tmp_path.iterdir()) == []  # the folders it made to try are gone again
    (tmp_path / "file").write_text("")
    assert unwritable_dir(tmp_path / "file") == "exists and is not a directory"
    assert unwritable_dir(tmp_path / "file" / "x") == (
        f"cannot create it, {tmp_path / 'file'} is not a directory")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert unwritable_dir(tmp_path / "new") == "cannot create files in it (Read-only file system)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    monkeypatch.setattr(os, "mkdir", lambda *a, **k: read_only())
    assert unwritable_dir(tmp_path / "new") == "cannot create it (Read-only file system)"
