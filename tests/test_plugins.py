"""Plugin discovery through real entry points, ZOO_PLUGINS / ZOO_DISABLE_PLUGINS selection, whole-plugin
failure isolation, its warnings, strict mode and ``zoo plugins``."""

import importlib
import json
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

import zoo
from zoo.cli import main
from zoo.errors import PluginError
from zoo.plugins import CORE_MODULES, PluginHost, PluginWarning

BUILT_INS = {"dense-vae", "conv-vae", "denoising-ae", "colorization-ae"}

GOOD_PLUGIN = """
import dataclasses
import zoo
from zoo.components import MLP
from zoo.vae import VAEConfig, VariationalAutoencoder

@dataclasses.dataclass
class TinyConfig(VAEConfig):
    latent_dim: int = 2

class TinyVAE(VariationalAutoencoder):
    architecture = "{name}"
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.encoder = MLP(784, [8], 4)
        self.decoder = MLP(2, [8], 784)

    def posterior(self, x):
        return self.encoder(x.flatten(1)).chunk(2, dim=-1)

    def decoder_logits(self, z):
        return self.decoder(z).view(-1, 1, 28, 28)

@zoo.hookimpl
def register_architectures(register):
    register(TinyVAE)
"""

FAILURES = {
    "raises-on-import": "raise RuntimeError('boom at import')\n",
    "raises-in-hook": """
import zoo

@zoo.hookimpl
def register_architectures(register):
    raise RuntimeError('boom in hook')
""",
    "duplicate-name": GOOD_PLUGIN.replace("{name}", "conv-vae"),
    "invalid-registration": """
import zoo

@zoo.hookimpl
def register_architectures(register):
    register(object)
""",
    "bad-hook-signature": """
import zoo

@zoo.hookimpl
def register_architectures(add_one):
    pass
""",
}

EXPECTED_MESSAGE = {
    "raises-on-import": "import of 'raises_on_import' failed: RuntimeError: boom at import",
    "raises-in-hook": "register_architectures raised RuntimeError: boom in hook",
    "duplicate-name": "architecture 'conv-vae' is already registered by plugin 'conv-vae'",
    "invalid-registration": "is not a subclass of zoo.model.Autoencoder",
    "bad-hook-signature": "invalid hook implementation",
}


def test_built_ins_are_discovered_through_entry_points(fresh_plugins):
    host = fresh_plugins.get_host()
    assert BUILT_INS <= set(zoo.list_architectures())
    for name in BUILT_INS:
        record = host.records[name]
        assert record.distribution == "ae-zoo" and record.version == zoo.__version__
        assert record.module == f"zoo_plugins.{name.replace('-', '_')}"
        assert record.hooks == ["register_architectures", "register_models"]
        assert name in record.registered and not record.errors and record.status == "loaded"


def test_third_party_distribution_is_discovered(plugin_distribution):
    plugin_distribution("zoo-tiny", GOOD_PLUGIN.replace("{name}", "tiny-vae"), version="2.5")
    assert "tiny-vae" in zoo.list_architectures()
    record = zoo.plugins.get_host().records["zoo-tiny"]
    assert (record.distribution, record.version, record.registered) == ("zoo-tiny", "2.5", ["tiny-vae"])
    assert zoo.create("tiny-vae").sample(2).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("case", FAILURES)
def test_broken_plugin_warns_and_the_zoo_keeps_working(plugin_distribution, case):
    plugin_distribution(case, FAILURES[case], version="0.3")
    plugin_distribution("zoo-tiny", GOOD_PLUGIN.replace("{name}", "tiny-vae"))
    with pytest.warns(PluginWarning) as caught:
        names = zoo.list_architectures()
    messages = [str(w.message) for w in caught]
    assert any(f"distribution {case} 0.3" in m and EXPECTED_MESSAGE[case] in m for m in messages), messages
    assert BUILT_INS | {"tiny-vae"} <= set(names)
    record = zoo.plugins.get_host().records[case]
    assert record.errors and EXPECTED_MESSAGE[case] in record.errors[0]
    assert record.status == "skipped" and record.registered == []
    assert zoo.plugins.get_host().records["zoo-tiny"].status == "loaded"
    assert zoo.plugins.get_host().registry.owners[("architecture", "conv-vae")] == "conv-vae"


@pytest.mark.parametrize("case", FAILURES)
def test_strict_mode_raises(plugin_distribution, monkeypatch, case):
    monkeypatch.setenv("ZOO_STRICT_PLUGINS", "1")
    plugin_distribution(case, FAILURES[case])
    with pytest.raises(PluginError, match=EXPECTED_MESSAGE[case].replace("(", r"\(").replace(")", r"\)")):
        zoo.list_architectures()


def test_zoo_plugins_restricts_loading(plugin_distribution, monkeypatch):
    plugin_distribution("raises-on-import", FAILURES["raises-on-import"])
    monkeypatch.setenv("ZOO_PLUGINS", "dense-vae, conv-vae")
    assert zoo.list_architectures() == ["conv-vae", "dense-vae"]
    records = zoo.plugins.get_host().records
    assert {name for name, r in records.items() if r.module not in CORE_MODULES} == {"dense-vae", "conv-vae"}


def test_zoo_plugins_accepts_distribution_names(plugin_distribution, monkeypatch):
    plugin_distribution("zoo-tiny", GOOD_PLUGIN.replace("{name}", "tiny-vae"))
    monkeypatch.setenv("ZOO_PLUGINS", "zoo-tiny")
    assert zoo.list_architectures() == ["tiny-vae"]


def test_empty_zoo_plugins_loads_only_the_core(fresh_plugins, monkeypatch):
    monkeypatch.setenv("ZOO_PLUGINS", "")
    assert zoo.list_architectures() == [] and zoo.list_models() == []
    with pytest.raises(zoo.errors.UnknownNameError, match="unknown architecture 'conv-vae'"):
        zoo.create("conv-vae")


def test_invalid_pretrained_entry_is_isolated(plugin_distribution):
    plugin_distribution("bad-models", """
import zoo
from zoo.registry import PretrainedEntry

@zoo.hookimpl
def register_models(register):
    register(PretrainedEntry(name="conv-vae-nowhere", architecture="conv-vae", config={}, sha256="0" * 64))
    register(PretrainedEntry(name="dense-vae-bad", architecture="dense-vae", config={"latent_dim": 0},
                             sha256="0" * 64, repo_id="x/y"))
    register(PretrainedEntry(name="conv-vae-ok", architecture="conv-vae", config={}, sha256="0" * 64, repo_id="x/y"))
""")
    with pytest.warns(PluginWarning) as caught:
        models = zoo.list_models()
    [text] = [str(w.message) for w in caught if "'bad-models'" in str(w.message)]
    assert "neither bundled weights nor a repo_id" in text and "'latent_dim'" in text
    # the whole plugin is skipped: its one valid entry does not stay registered either
    assert "conv-vae-ok" not in models and "dense-vae-bad" not in models
    record = zoo.plugins.get_host().records["bad-models"]
    assert len(record.errors) == 2 and record.registered == [] and record.status == "skipped"


# --- A failure anywhere skips the whole plugin --------------------------------------------------

PLUGIN_HEADER = '''
import dataclasses
import zoo
from zoo.components import MLP
from zoo.metrics import Metric, MetricSet
from zoo.registry import PretrainedEntry
from zoo.vae import VAEConfig, VariationalAutoencoder

@dataclasses.dataclass
class TinyConfig(VAEConfig):
    latent_dim: int = 2

def tiny(name):
    class TinyVAE(VariationalAutoencoder):
        architecture = name
        config_class = TinyConfig

        def __init__(self, config):
            super().__init__(config)
            self.encoder = MLP(784, [8], 4)
            self.decoder = MLP(2, [8], 784)

        def posterior(self, x):
            return self.encoder(x.flatten(1)).chunk(2, dim=-1)

        def decoder_logits(self, z):
            return self.decoder(z).view(-1, 1, 28, 28)
    return TinyVAE

def entry(name, architecture):
    return PretrainedEntry(name=name, architecture=architecture, config={}, sha256="0" * 64, repo_id="x/y")

def metric_set(name, metric):
    return MetricSet(name=name, metrics={metric: Metric("a test score", "", True)}, headline=metric,
                     applies=lambda model: False, run=lambda *args, **kwargs: {})
'''


def plugin(**hooks: str) -> str:
    """Source of a plugin module implementing each hook given as ``hook_name="body"``."""
    source = PLUGIN_HEADER
    for hook, body in hooks.items():
        source += f"\n@zoo.hookimpl\ndef {hook}(register):\n{textwrap.indent(textwrap.dedent(body).strip(), '    ')}\n"
    return source


def test_a_clashing_name_skips_everything_the_plugin_registers(plugin_distribution):
    plugin_distribution("half-clash", plugin(
        register_architectures="register(tiny('half-good'))\nregister(tiny('conv-vae'))",
        register_metrics="register(metric_set('half-metrics', 'half_score'))",
        register_models="register(entry('half-good-mnist', 'half-good'))",
    ))
    with pytest.warns(PluginWarning, match="'half-clash'"):
        host = zoo.plugins.get_host()
    registry = host.registry
    assert "half-good" not in registry.architectures and "half-good-mnist" not in registry.models
    assert "half-metrics" not in registry.metric_sets
    assert not any(owner == "half-clash" for owner in registry.owners.values())
    assert registry.owners[("architecture", "conv-vae")] == "conv-vae"
    record = host.records["half-clash"]
    assert record.status == "skipped" and record.registered == []
    assert record.hooks == ["register_architectures", "register_metrics", "register_models"]
    assert record.errors == [
        "register_architectures: architecture 'conv-vae' is already registered by plugin 'conv-vae'"]


def test_a_failing_register_models_also_drops_the_plugins_architectures(plugin_distribution):
    plugin_distribution("no-models", plugin(
        register_architectures="register(tiny('lonely-vae'))",
        register_models="raise RuntimeError('no models today')",
    ))
    with pytest.warns(PluginWarning, match="register_models raised RuntimeError: no models today"):
        architectures = zoo.list_architectures()
    assert "lonely-vae" not in architectures and BUILT_INS <= set(architectures)
    record = zoo.plugins.get_host().records["no-models"]
    assert record.errors == ["register_models raised RuntimeError: no models today"] and record.registered == []


def test_a_plugin_whose_architecture_provider_is_skipped_is_skipped_too(plugin_distribution):
    # "aaa-dependent" sorts before its provider: models may use any plugin's architecture
    plugin_distribution("aaa-dependent", plugin(register_models="register(entry('base-vae-mnist', 'base-vae'))"))
    plugin_distribution("zoo-base", plugin(
        register_architectures="register(tiny('base-vae'))\nregister(tiny('dense-vae'))"))
    plugin_distribution("aaa-healthy", plugin(register_models="register(entry('fine-vae-mnist', 'fine-vae'))"))
    plugin_distribution("zoo-fine", plugin(register_architectures="register(tiny('fine-vae'))"))
    with pytest.warns(PluginWarning) as caught:
        host = zoo.plugins.get_host()
    assert "base-vae" not in host.registry.architectures and "base-vae-mnist" not in host.registry.models
    assert host.records["aaa-dependent"].errors == [
        "register_models: pretrained model 'base-vae-mnist' needs architecture 'base-vae' from plugin 'zoo-base', "
        "which was skipped"]
    assert [r.status for r in map(host.records.get, ["aaa-dependent", "zoo-base", "aaa-healthy", "zoo-fine"])] == [
        "skipped", "skipped", "loaded", "loaded"]
    assert host.registry.owners[("pretrained model", "fine-vae-mnist")] == "aaa-healthy"
    skipped = sorted(str(w.message).split("'")[1] for w in caught if issubclass(w.category, PluginWarning))
    assert skipped == ["aaa-dependent", "zoo-base"]


def test_a_plugin_that_only_clashed_with_a_skipped_plugin_is_let_back_in(plugin_distribution):
    plugin_distribution("aaa-first", plugin(register_architectures="register(tiny('shared-vae'))",
                                            register_models="register(entry('nowhere-vae-mnist', 'nowhere-vae'))"))
    plugin_distribution("bbb-second", plugin(register_architectures="register(tiny('shared-vae'))"))
    with pytest.warns(PluginWarning, match="'aaa-first'"):
        host = zoo.plugins.get_host()
    assert host.registry.owners[("architecture", "shared-vae")] == "bbb-second"
    assert (host.records["bbb-second"].status, host.records["bbb-second"].errors) == ("loaded", [])
    assert host.records["aaa-first"].errors == [
        "register_models: pretrained model 'nowhere-vae-mnist' needs architecture 'nowhere-vae', "
        "which is not registered"]


# --- Warnings: one line, attributed to the plugin, once per process -------------------------------

def plugin_warnings(action, name: str) -> list[warnings.WarningMessage]:
    """The PluginWarnings about plugin ``name`` while ``action()`` runs under the default warning filter."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        action()
    return [w for w in caught if issubclass(w.category, PluginWarning) and f"plugin {name!r}" in str(w.message)]


def test_the_warning_is_one_line_points_at_the_plugin_and_is_shown_once(plugin_distribution, tmp_path):
    plugin_distribution("zoo-noisy", """
        import zoo

        @zoo.hookimpl
        def register_architectures(register):
            raise RuntimeError("first line\\n  second line")
        """, version="0.3")

    def load_three_times():
        zoo.plugins.get_host()
        zoo.plugins.reload()
        zoo.plugins.build_host()

    [warning] = plugin_warnings(load_three_times, "zoo-noisy")
    assert str(warning.message) == (
        "ae-zoo plugin 'zoo-noisy' (distribution zoo-noisy 0.3, entry point zoo-noisy = zoo_noisy): "
        "register_architectures raised RuntimeError: first line second line; skipped "
        "(set ZOO_DISABLE_PLUGINS=zoo-noisy to silence this)")
    assert warning.category is PluginWarning
    assert Path(warning.filename) == tmp_path / "zoo_noisy.py"
    assert Path(warning.filename).read_text().splitlines()[warning.lineno - 1] == "@zoo.hookimpl"
    assert zoo.plugins.get_host().records["zoo-noisy"].errors == [
        "register_architectures raised RuntimeError: first line second line"]


def test_the_warning_points_at_the_module_file_even_when_the_import_fails(plugin_distribution, tmp_path):
    plugin_distribution("raises-on-import", FAILURES["raises-on-import"])
    plugin_distribution("ghost", "")
    (tmp_path / "ghost-1.0.dist-info" / "entry_points.txt").write_text("[zoo]\nghost = no_such_ghost_module\n")
    [broken] = plugin_warnings(zoo.plugins.get_host, "raises-on-import")
    assert (Path(broken.filename), broken.lineno) == (tmp_path / "raises_on_import.py", 1)
    [ghost] = plugin_warnings(zoo.plugins.reload, "ghost")
    assert (ghost.filename, ghost.lineno) == ("<entry point ghost>", 1)
    assert str(ghost.message) == (
        "ae-zoo plugin 'ghost' (distribution ghost 1.0, entry point ghost = no_such_ghost_module): import of "
        "'no_such_ghost_module' failed: ModuleNotFoundError: No module named 'no_such_ghost_module'; skipped "
        "(set ZOO_DISABLE_PLUGINS=ghost to silence this)")


# --- Strict mode ----------------------------------------------------------------------------------

def test_strict_mode_lists_every_error_of_every_plugin_at_once(plugin_distribution, monkeypatch):
    monkeypatch.setenv("ZOO_STRICT_PLUGINS", "1")
    plugin_distribution("raises-in-hook", FAILURES["raises-in-hook"])
    plugin_distribution("zoo-tiny", GOOD_PLUGIN.replace("{name}", "tiny-vae"))
    plugin_distribution("bad-models", plugin(register_models="""
        register(PretrainedEntry(name='conv-vae-nowhere', architecture='conv-vae', config={}, sha256='0' * 64))
        register(PretrainedEntry(name='dense-vae-bad', architecture='dense-vae', config={'latent_dim': 0},
                                 sha256='0' * 64, repo_id='x/y'))
        """))
    with pytest.raises(PluginError) as raised:
        zoo.list_architectures()
    lines = str(raised.value).splitlines()
    assert lines[0] == ("2 ae-zoo plugins failed to load and ZOO_STRICT_PLUGINS is on (fix them, or skip them "
                        "with ZOO_DISABLE_PLUGINS=bad-models,raises-in-hook):")
    assert len(lines) == 4
    assert lines[1].startswith("- plugin 'bad-models' (distribution bad-models 1.0, entry point bad-models = "
                               "bad_models): register_models: ") and "neither bundled weights nor a repo_id" in lines[1]
    assert lines[2].startswith("- plugin 'bad-models' ") and "'latent_dim'" in lines[2]
    assert lines[3] == ("- plugin 'raises-in-hook' (distribution raises-in-hook 1.0, entry point raises-in-hook = "
                        "raises_in_hook): register_architectures raised RuntimeError: boom in hook")


# --- `zoo plugins` -----------------------------------------------------------------------------

def zoo_plugins(*args: str):
    return CliRunner().invoke(main, ["plugins", *args])


def test_zoo_plugins_reports_every_status_and_fails_only_in_strict_mode(plugin_distribution, monkeypatch):
    plugin_distribution("raises-in-hook", FAILURES["raises-in-hook"])
    plugin_distribution("duplicate-name", FAILURES["duplicate-name"])
    plugin_distribution("zoo-tiny", GOOD_PLUGIN.replace("{name}", "tiny-vae"))
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "duplicate-name")
    expected = {"conv-vae": "loaded", "zoo-tiny": "loaded", "raises-in-hook": "skipped", "duplicate-name": "disabled"}

    for strict, exit_code in (("1", 1), ("0", 0)):
        monkeypatch.setenv("ZOO_STRICT_PLUGINS", strict)
        result = zoo_plugins("--json")
        assert result.exit_code == exit_code, result.output
        plugins = {p["name"]: p for p in json.loads(result.stdout)}
        assert {name: plugins[name]["status"] for name in expected} == expected
        assert plugins["raises-in-hook"]["errors"] == ["register_architectures raised RuntimeError: boom in hook"]
        assert plugins["zoo-tiny"]["registered"] == ["tiny-vae"] and plugins["zoo-tiny"]["version"] == "1.0"
        assert {"name", "distribution", "version", "module", "hooks", "registered", "errors", "status"} <= set(
            plugins["zoo-tiny"])
        if strict == "1":
            assert "ZOO_STRICT_PLUGINS is on and 1 plugin has errors: raises-in-hook" in result.stderr
        else:
            assert result.stderr == ""

    monkeypatch.setenv("ZOO_STRICT_PLUGINS", "1")
    result = zoo_plugins()
    assert result.exit_code == 1
    assert "raises-in-hook  (raises-in-hook 1.0)\n  status:     skipped\n" in result.stdout
    assert "  error:      register_architectures raised RuntimeError: boom in hook\n" in result.stdout
    assert "duplicate-name  (duplicate-name 1.0)\n  status:     disabled (ZOO_DISABLE_PLUGINS)\n" in result.stdout


# --- ZOO_DISABLE_PLUGINS ------------------------------------------------------------------------

def test_disabling_a_plugin_by_entry_point_name_skips_it_without_a_warning(plugin_distribution, monkeypatch):
    module = plugin_distribution("raises-on-import", FAILURES["raises-on-import"])
    plugin_distribution("zoo-tiny", GOOD_PLUGIN.replace("{name}", "tiny-vae"))
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", " raises-on-import ,unknown-name")
    monkeypatch.setenv("ZOO_STRICT_PLUGINS", "1")  # a disabled plugin is no error
    assert plugin_warnings(zoo.plugins.get_host, "raises-on-import") == []
    host = zoo.plugins.get_host()
    assert module not in sys.modules  # never imported
    record = host.records["raises-on-import"]
    assert (record.status, record.errors, record.hooks) == ("disabled", [], [])
    assert BUILT_INS | {"tiny-vae"} <= set(host.registry.architectures)


def test_disabling_by_distribution_name_disables_its_every_entry_point(plugin_distribution, monkeypatch):
    plugin_distribution("zoo-tiny", GOOD_PLUGIN.replace("{name}", "tiny-vae"))
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "ae-zoo")  # the built-ins' distribution
    architectures = zoo.list_architectures()
    assert "tiny-vae" in architectures and not BUILT_INS & set(architectures)
    assert not any(name.startswith(tuple(BUILT_INS)) for name in zoo.list_models())
    records = zoo.plugins.get_host().records
    assert {name: records[name].status for name in BUILT_INS} == dict.fromkeys(BUILT_INS, "disabled")
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "Zoo_Tiny")  # distribution names compare as pip does
    assert "tiny-vae" not in zoo.plugins.reload().registry.architectures


# --- Core modules and direct registration ------------------------------------------------------

def test_core_modules_load_first_whatever_the_environment_says(plugin_module, plugin_distribution, monkeypatch):
    plugin_module("zoo_test_core", plugin(register_architectures="register(tiny('core-vae'))",
                                          register_metrics="register(metric_set('core-quality', 'core_score'))"))
    plugin_module("zoo_test_broken_core", "import zoo_test_missing_dependency\n")
    monkeypatch.setattr(zoo.plugins, "CORE_MODULES", ("zoo_test_core", "zoo_test_absent_core", "zoo_test_broken_core"))
    monkeypatch.setitem(zoo.plugins.CORE_PLUGIN_NAMES, "zoo_test_core", "test-core")
    plugin_distribution("zoo-copycat", plugin(register_architectures="register(tiny('core-vae'))"))
    monkeypatch.setenv("ZOO_PLUGINS", "zoo-copycat")
    monkeypatch.setenv("ZOO_DISABLE_PLUGINS", "test-core,ae-zoo,zoo_test_core")
    with pytest.warns(PluginWarning) as caught:
        host = zoo.plugins.get_host()
    assert list(host.records) == ["test-core", "zoo_test_broken_core", "zoo-copycat"]  # an absent one is left out
    core = host.records["test-core"]
    assert (core.distribution, core.module, core.status) == ("ae-zoo", "zoo_test_core", "loaded")
    assert core.registered == ["core-vae", "core-quality"] and "core-quality" in host.registry.metric_sets
    assert host.records["zoo-copycat"].errors == [
        "register_architectures: architecture 'core-vae' is already registered by plugin 'test-core'"]
    assert host.records["zoo_test_broken_core"].errors == [
        "import of 'zoo_test_broken_core' failed: ModuleNotFoundError: No module named 'zoo_test_missing_dependency'"]
    assert sorted(str(w.message).split("'")[1] for w in caught) == ["zoo-copycat", "zoo_test_broken_core"]


def test_register_module_isolates_plugins_that_have_no_entry_point(plugin_module):
    good = importlib.import_module(plugin_module("zoo_direct_good", plugin(
        register_architectures="register(tiny('direct-vae'))")))
    bad = importlib.import_module(plugin_module("zoo_direct_bad", plugin(
        register_architectures="register(tiny('direct-other'))",
        register_models="register(entry('missing-vae-mnist', 'missing-vae'))")))
    host = PluginHost(strict=False)
    assert host.register_module(good).name == "zoo_direct_good"
    host.register_module(bad, name="bad-direct")
    with pytest.warns(PluginWarning) as caught:
        registry = host.collect()
    assert [str(w.message) for w in caught] == [
        "ae-zoo plugin 'bad-direct' (module zoo_direct_bad): register_models: pretrained model 'missing-vae-mnist' "
        "needs architecture 'missing-vae', which is not registered; skipped"]
    assert sorted(registry.architectures) == ["direct-vae"]
    assert host.records["zoo_direct_good"].registered == ["direct-vae"]
    assert host.records["bad-direct"].registered == [] and host.records["bad-direct"].status == "skipped"
