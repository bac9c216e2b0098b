"""The fastconv command line: info and a one-layer benchmark run."""

import re
import subprocess
import sys

import pytest

from fastconv.__main__ import main


def test_info_lists_backends_threads_and_blas(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^backends .*numpy", out, re.M)
    assert re.search(r"^threads  \d+", out, re.M)
    assert re.search(r"^blas ", out, re.M)


def test_bench_times_selected_layers(capsys):
    assert main(["bench", "--quick", "--layers", "lenet5.c1", "maxpool.2x2s2",
                 "deconv3x3", "--backend", "numpy", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    row = re.search(r"^lenet5\.c1\s+(\S+)\s+\S+\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert row and float(row.group(2)) > 0 and float(row.group(3)) > 0
    assert re.search(r"^maxpool\.2x2s2\s+\S+\s+[\d.]+\s+[\d.]+", out, re.M)
    assert len(re.findall(r"^deconv3x3\.128to128\.28\s+\S+\s+[\d.]+\s+[\d.]+", out, re.M)) == 2
    assert "vgg16" not in out


def test_bench_pause_sets_the_rest_between_runs(capsys):
    args = ["bench", "--quick", "--layers", "lenet5.c1", "--backend", "numpy", "--threads", "1",
            "--pass", "forward"]
    assert main(args) == 0
    assert "runs 0.1 s apart" in capsys.readouterr().out
    assert main(args + ["--pause", "0"]) == 0
    out = capsys.readouterr().out
    assert "runs back to back" in out and re.search(r"^lenet5\.c1\s+\S+\s+\S+\s+[\d.]+", out, re.M)
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(SystemExit):
            main(args + ["--pause", bad])
    assert "expected seconds, 0 or more" in capsys.readouterr().err


def test_module_entry_point_rejects_unknown_command():
    result = subprocess.run([sys.executable, "-m", "fastconv", "nonsense"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_bench_rejects_unknown_backend():
    with pytest.raises(SystemExit):
        main(["bench", "--backend", "tpu"])


def test_summary_prints_every_layer_and_torchvisions_totals(capsys):
    assert main(["summary", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^layer4\.2\.conv3\s+Conv2d\s+\(2048, 7, 7\)\s+1,048,576\s+51,380,224$",
                     out, re.M)
    # torchvision's 25,557,032 parameters and torchinfo's 4.09 G multiply-adds
    assert out.splitlines()[-1].split()[1:] == ["25,557,032", "4,089,184,256"]
    assert main(["summary", "vgg16"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^features\.28\s+Conv2d\s+\(512, 14, 14\)", out, re.M)
    assert out.splitlines()[-1].split()[1:] == ["138,357,544", "15,470,264,320"]


def test_bench_model_times_inference_against_torch(capsys):
    assert main(["bench", "--model", "resnet18", "--backend", "numba", "--rounds", "1",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    row = re.search(r"^numba\s+([\d.]+)\s+(\S+)\s+(\S+)$", out, re.M)
    assert row and float(row.group(1)) > 0
    try:
        import torch  # noqa: F401
    except ImportError:
        assert row.group(2) == row.group(3) == "-"
    else:                                   # same weights as PyTorch's model, same output
        assert float(row.group(2)) > 0 and float(row.group(3)) <= 1e-4
