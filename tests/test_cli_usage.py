"""What a newcomer meets following the README: every mistake a one-line error with exit status 2, and
README command lines that paste and parse as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from resnet.cli import build_parser, main
from resnet.errors import UsageError

README = Path(__file__).resolve().parents[1] / "README.md"


def run(capsys, *argv: str) -> tuple[int, str]:
    """``resnet ARGV`` in this process: (exit status, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's errors
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["train", "--iterations", "0"], "--iterations"),  # used to start the recipe's full 64k-iteration run
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "nan"], "finite"),
    (["train", "--epochs", "inf"], "finite"),
    (["train", "--iterations", "-5"], "positive"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "nan"], "finite"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--eval-every", "0"], "--eval-every"),
    (["train", "--warmup", "-1"], "--warmup"),
    (["train", "--workers", "-1"], "--workers"),
    (["train", "--num-classes", "0"], "--num-classes"),
    (["eval", "--weights", "w", "--batch-size", "0"], "--batch-size"),
    (["predict", "x.jpg", "--weights", "w", "--top", "0"], "--top"),
    (["export", "w", "--out", "x.onnx", "--input-size", "0"], "--input-size"),
    (["reproduce", "cifar-depth", "--seeds", "0"], "--seeds"),
    (["reproduce", "cifar-depth", "--jobs", "0"], "--jobs"),
    (["reproduce", "cifar-depth", "--depths", "20,0"], "--depths"),
    (["compare", "run", "--target", "nan"], "finite"),
    (["bench", "data", "--data-dir", "d", "--batches", "0"], "--batches"),
])
def test_budgets_and_sizes_without_meaning_are_refused(capsys, argv, needle):
    code, err = run(capsys, *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_readme_failures_are_one_line_exit_2(capsys, tmp_path):
    """Commands of the README that once ended in a traceback, each a mistake a user makes."""
    cases = [
        (["eval", "--weights", "resnet20-cifar10", "--model", "resnet20", "--data", "imagefolder"], "--data-dir"),
        (["compare", str(tmp_path), "--plot", "/nonexistent/dir/x.png"], "/nonexistent/dir"),
        (["export", "resnet20-cifar10", "--out", str(tmp_path / "x.bin")], "--format"),
        (["reproduce", "imagenet-depth", "--budget", "smoke", "--data", "imagefolder", "--data-dir",
          str(tmp_path / "missing"), "--out", str(tmp_path / "report"), "--launch", "--device", "cpu"],
         "resnet reproduce: error: no such data folder"),  # the trainer's, called in this process
    ]
    for argv, needle in cases:
        code, err = run(capsys, *argv)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_a_failed_launch_shows_the_childs_error_line_not_a_traceback():
    from resnet.experiments.imagenet import _execute

    child = ("import sys; print('step 1', flush=True); print('resnet train: error: no such data folder: /x', "
             "file=sys.stderr); print('torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ...', "
             "file=sys.stderr); sys.exit(1)")
    with pytest.raises(UsageError) as e:
        _execute([sys.executable, "-c", child, "resnet", "train"])
    assert str(e.value) == "the train command failed (exit status 1): resnet train: error: no such data folder: /x"
    assert _execute([sys.executable, "-c", "print('{\"top1_error\": 1.5}')"]) == '{"top1_error": 1.5}\n'
    with pytest.raises(UsageError, match="cannot run"):
        _execute(["/nonexistent/torchrun", "--nproc_per_node=8"])


def test_a_mistake_is_one_line_on_stderr_from_the_shell():
    r = subprocess.run([sys.executable, "-m", "resnet", "train", "--iterations", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("resnet train: error: argument --iterations")
    assert len(r.stderr.strip().splitlines()) == 1 and not r.stdout


def readme_commands() -> list[str]:
    """Every ``resnet ...`` command line in the ```bash blocks of the README and the docs' pages (``\\`` continuations
    joined; ``torchrun ... -m resnet ...`` counts too), without comments. The dated notes (docs/notes/) are logs of
    what was run then, not instructions, and are left out."""
    pages = [README, *sorted((README.parent / "docs").glob("*.md"))]
    blocks = [b for page in pages for b in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)]
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "resnet" in words and (words[0] == "resnet" or words[words.index("resnet") - 1] == "-m"):
                commands.append(shlex.join(words[words.index("resnet"):]))
    return commands


def test_readme_has_commands_to_check():
    commands = readme_commands()
    assert len(commands) > 30 and any(c.startswith("resnet train") for c in commands)


@pytest.mark.parametrize("command", readme_commands())
def test_readme_commands_parse_as_written(command, capsys):
    """Parsed by the command's own argument parser (nothing runs): what pastes into a shell is a valid command."""
    try:
        args = build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit:
        pytest.fail(f"README command does not parse: {command}\n{capsys.readouterr().err}")
    assert callable(args.func)
