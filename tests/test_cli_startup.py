"""The command line answers `--help`, `--version`, argument errors and a job file's bad settings without
importing the model libraries (issue 25: `--help` took 10–30 s and 450 MB when building the parser
imported torch and diffusers). Checked by what a fresh interpreter imported, not by a timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import limit

MODEL_LIBRARIES = ("torch", "diffusers", "transformers")


def _run(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -m videograin ARGS` in a fresh interpreter, and the top-level modules it imported
    (from `-X importtime`, which lists every import on stderr)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "videograin", *args], capture_output=True, check=False,
                         text=True, timeout=limit(300), cwd=cwd)
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in run.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    return run, imported


def test_building_the_parser_imports_no_model_library():
    code = (
        "import sys\n"
        "from videograin.engine.cli import build_parser\n"
        "parser = build_parser()\n"
        "for command in ('edit', 'check', 'serve', 'bench', 'eval', 'timeline', 'mattes', 'demo'):\n"
        "    assert command in parser.format_help(), command\n"
        f"print(sorted(m for m in {MODEL_LIBRARIES!r} if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=limit(300), check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["serve", "--help"], ["edit", "job.yaml"], ["nonsense"]],
                         ids=["help", "version", "serve-help", "missing-option", "unknown-command"])
def test_help_version_and_argument_errors_import_no_model_library(args):
    run, imported = _run(*args)
    assert run.returncode == (2 if args[0] in ("edit", "nonsense") else 0), run.stderr[-2000:]
    assert "videograin" in imported  # the import list was read
    assert imported.isdisjoint(MODEL_LIBRARIES)


def test_a_job_with_an_unknown_key_is_refused_before_torch_is_imported(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("prompt: a man\nsource_prompt: a man\nsource: {path: frames}\nregions: [{phrase: man, mask: m}]\n"
                   "stepz: 5\n")
    for command in (["check", str(job)], ["edit", str(job), "--out", str(tmp_path / "out")]):
        run, imported = _run(*command)
        assert run.returncode == 2
        assert "error [bad_job]: unknown setting 'stepz'" in run.stderr
        assert imported.isdisjoint(MODEL_LIBRARIES), command
    assert not (tmp_path / "out").exists()
